#!/bin/bash
#
# Translation of Mail-in-a-Box v75 setup/mail-users.sh to Dovecot 2.4 (Debian 13) for the
# live-box test; what changed:
#
# * The users database ($STORAGE_ROOT/mail/users.sqlite, the same four tables) and
#   everything on the Postfix side (SASL through Dovecot's auth socket, sender login maps,
#   virtual domain/mailbox/alias maps, smtputf8_enable=no) are unchanged: Postfix 3.10 takes
#   the same settings and the same sqlite map files.
# * The switch from system users to the SQL users is the same sed on conf.d/10-auth.conf:
#   `!include auth-system.conf.ext` commented, `!include auth-sql.conf.ext` uncommented
#   (Debian's 2.4 10-auth.conf has both lines as 2.3's did).
# * 2.4 has no `args = /etc/dovecot/dovecot-sql.conf.ext` any more: the SQL settings live
#   in the passdb/userdb blocks themselves, which are named (`passdb sql { }`,
#   `userdb sql { }`; the name is the driver). So /etc/dovecot/dovecot-sql.conf.ext is no
#   longer written; everything is in conf.d/auth-sql.conf.ext, still pulled in by the
#   `!include auth-sql.conf.ext` line of 10-auth.conf. That file is made 0600 as the SQL
#   file was.
#     driver = sqlite / connect = PATH   -> sql_driver = sqlite / sqlite_path = PATH
#     default_pass_scheme = SHA512-CRYPT -> default_password_scheme = SHA512-CRYPT (passdb)
#     password_query / user_query        -> `query` in the passdb / userdb block
#     iterate_query                      -> iterate_query in the userdb block
#     %u, %d, %n                         -> %{user}, %{user | domain}, %{user | username}
# * The userdb fields are the same (user, uid mail, gid mail, home = the maildir) except the
#   quota: 2.3's `'*:bytes=' || quota AS quota_rule` becomes `quota AS quota_storage_size`
#   (2.4 has no quota_rule; userdb fields override settings, and quota_storage_size takes
#   MIAB's values as they are: '0' = unlimited, '500M', '5G', or plain bytes). 2.3's
#   `quota_grace = 10%%` cannot be written as a 2.4 setting (quota_storage_grace is a size
#   only), so the query also returns quota_storage_grace = a tenth of the limit in bytes,
#   computed from the same column (M = 1024^2, G = 1024^3 as Dovecot reads them).
# * The string literals in user_query use single quotes ('mail', the home path): 2.3's
#   double-quoted "mail" only worked because SQLite falls back from identifiers to strings.
# * The auth socket for Postfix (/var/spool/postfix/private/auth, 0666 postfix:postfix) has
#   the same syntax in 2.4 (99-local-auth.conf unchanged).
# * Unchanged: restarts of postfix and dovecot and the final `doveadm quota recalc -A`.

source setup/functions.sh # load our functions
source /etc/mailinabox.conf # load global vars

# ### User and Alias Database

db_path=$STORAGE_ROOT/mail/users.sqlite

# A new, empty database on first run (same schema as MIAB v75).
if [ ! -f "$db_path" ]; then
	echo "Creating new user database: $db_path"
	sqlite3 "$db_path" << 'EOF'
CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, password TEXT NOT NULL, extra, privileges TEXT NOT NULL DEFAULT '', quota TEXT NOT NULL DEFAULT '0');
CREATE TABLE aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL, permitted_senders TEXT);
CREATE TABLE mfa (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, type TEXT NOT NULL, secret TEXT NOT NULL, mru_token TEXT, label TEXT, FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE);
CREATE TABLE auto_aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL, permitted_senders TEXT);
EOF
fi

# ### Dovecot: users from the database

# Authenticate against our database instead of the system's users.
sed -i "s/#*\(\!include auth-system.conf.ext\)/#\1/" /etc/dovecot/conf.d/10-auth.conf
sed -i "s/#\(\!include auth-sql.conf.ext\)/\1/" /etc/dovecot/conf.d/10-auth.conf

# The quota column as bytes, for the 10% grace: '5G', '500M' or a plain number.
# (No "%" in it: Dovecot would take it for a variable.)
quota_bytes="CAST(quota AS INTEGER) * CASE substr(quota, -1) WHEN 'G' THEN 1073741824 WHEN 'M' THEN 1048576 ELSE 1 END"

# passdb: the password hash (SHA512-CRYPT) by full address.
# userdb: the mail user/group, the home (= the maildir) and the quota limit and grace.
cat > /etc/dovecot/conf.d/auth-sql.conf.ext << EOF
## Written by the Dovecot 2.4 translation of Mail-in-a-Box's mail-users.sh. Do not edit.
passdb sql {
  sql_driver = sqlite
  sqlite_path = $db_path
  default_password_scheme = SHA512-CRYPT
  query = SELECT email AS user, password FROM users WHERE email = '%{user}'
}
userdb sql {
  sql_driver = sqlite
  sqlite_path = $db_path
  query = SELECT email AS user, 'mail' AS uid, 'mail' AS gid, '$STORAGE_ROOT/mail/mailboxes/%{user | domain}/%{user | username}' AS home, quota AS quota_storage_size, ($quota_bytes) / 10 AS quota_storage_grace FROM users WHERE email = '%{user}'
  iterate_query = SELECT email AS user FROM users
}
EOF
chmod 0600 /etc/dovecot/conf.d/auth-sql.conf.ext

# The SASL service Postfix authenticates through.
cat > /etc/dovecot/conf.d/99-local-auth.conf << 'EOF'
service auth {
  unix_listener /var/spool/postfix/private/auth {
    mode = 0666
    user = postfix
    group = postfix
  }
}
EOF

# ### Postfix (unchanged from MIAB v75)

# SASL through Dovecot, enabled only on the submission ports (master.cf), not on 25.
tools/editconf.py /etc/postfix/main.cf \
	smtpd_sasl_type=dovecot \
	smtpd_sasl_path=private/auth \
	smtpd_sasl_auth_enable=no

# Who may send as which address: alias permitted_senders, alias destinations, the user.
tools/editconf.py /etc/postfix/main.cf \
	smtpd_sender_login_maps=sqlite:/etc/postfix/sender-login-maps.cf

cat > /etc/postfix/sender-login-maps.cf << EOF;
dbpath=$db_path
query = SELECT permitted_senders FROM (SELECT permitted_senders, 0 AS priority FROM aliases WHERE source='%s' AND permitted_senders IS NOT NULL UNION SELECT destination AS permitted_senders, 1 AS priority FROM aliases WHERE source='%s' AND permitted_senders IS NULL UNION SELECT email as permitted_senders, 2 AS priority FROM users WHERE email='%s') ORDER BY priority LIMIT 1;
EOF

# Which domains, mailboxes and aliases we accept mail for; no SMTPUTF8 (Dovecot's LMTP
# would bounce it).
tools/editconf.py /etc/postfix/main.cf \
	smtputf8_enable=no \
	virtual_mailbox_domains=sqlite:/etc/postfix/virtual-mailbox-domains.cf \
	virtual_mailbox_maps=sqlite:/etc/postfix/virtual-mailbox-maps.cf \
	virtual_alias_maps=sqlite:/etc/postfix/virtual-alias-maps.cf \
	local_recipient_maps=\$virtual_mailbox_maps

cat > /etc/postfix/virtual-mailbox-domains.cf << EOF;
dbpath=$db_path
query = SELECT 1 FROM users WHERE email LIKE '%%@%s' UNION SELECT 1 FROM aliases WHERE source LIKE '%%@%s' UNION SELECT 1 FROM auto_aliases WHERE source LIKE '%%@%s'
EOF

cat > /etc/postfix/virtual-mailbox-maps.cf << EOF;
dbpath=$db_path
query = SELECT 1 FROM users WHERE email='%s'
EOF

# Aliases first, then users as aliases of themselves (so catch-alls don't swallow them),
# then automatic aliases; empty destinations skipped.
cat > /etc/postfix/virtual-alias-maps.cf << EOF;
dbpath=$db_path
query = SELECT destination from (SELECT destination, 0 as priority FROM aliases WHERE source='%s' AND destination<>'' UNION SELECT email as destination, 1 as priority FROM users WHERE email='%s' UNION SELECT destination, 2 as priority FROM auto_aliases WHERE source='%s' AND destination<>'') ORDER BY priority LIMIT 1;
EOF

# ### Restart services

restart_service postfix
restart_service dovecot

# Recalculate every user's quota usage.
doveadm quota recalc -A
