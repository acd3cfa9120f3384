#!/bin/bash
#
# Translation of Mail-in-a-Box v75 setup/mail-dovecot.sh to Dovecot 2.4 (Debian 13) for the
# live-box test; what changed:
#
# * Same job, same values: Dovecot is the IMAP/POP3 server and, over LMTP on 127.0.0.1:10026
#   (fed by spampd), the local delivery agent with sieve. Only the configuration syntax moved
#   to Dovecot 2.4.1, which refuses most 2.3 setting names.
# * Packages: the same list, installed with MIAB's apt_install (all exist in trixie).
# * Debian 13's stock 10-mail.conf sets mail_driver=mbox, mail_home, mail_path and
#   mail_inbox_path (/var/mail/%{user}) uncommented. `mail_location=maildir:...` is gone in 2.4:
#   it becomes mail_driver=maildir + mail_path=$STORAGE_ROOT/mail/mailboxes/%{user|domain}/
#   %{user|username} (%d/%n are gone, the new %{variable | filter} syntax replaces them), and
#   mail_home / mail_inbox_path are commented out (the userdb returns home, INBOX is the
#   maildir root as with 2.3's mail_location without INBOX=).
# * Debian 13's stock 20-lmtp.conf has `auth_username_format = %{user | username | lower}`
#   inside `protocol lmtp` (it strips the domain for the passwd userdb). MIAB's users are
#   full addresses, so that line is commented out; without it LMTP would look up "me"
#   instead of "me@domain". (Ubuntu's 2.3 config had no such line.)
# * mail_plugins is a boolean list in 2.4: `mail_plugins { quota = yes }` globally,
#   `protocol imap { mail_plugins { imap_quota = yes } }` and `protocol lmtp { mail_plugins
#   { sieve = yes } }`, written in our own conf.d files instead of sed-editing the
#   `#mail_plugins = ...` lines (2.4's stock files have block-style comments there).
# * Quota: the plugin {} block is gone. `quota = maildir` becomes a quota root
#   `quota "User quota" { driver = maildir }` (still Maildir++ `maildirsize` files, which
#   MIAB's management/mailconfig.py reads for its usage column). The per-user limit comes
#   from the userdb field quota_storage_size instead of quota_rule (see mail-users.sh).
#   `quota_grace = 10%%` has no 2.4 spelling: quota_storage_grace only takes a size ("10%"
#   is refused with "Invalid size"), so mail-users.sh's user_query returns
#   quota_storage_grace = a tenth of the user's limit in bytes (the same 10% grace; 2.4's
#   default would be 10M). quota_status_success/nouser/overquota keep their names and
#   MIAB's values. quota_status_toolarge is now set to the overquota reply: 2.3 fell back
#   to quota_status_overquota for a mail bigger than the whole limit, while 2.4 (empty
#   string default instead of unset) answers a bare "action=" that Postfix can't use.
#   The quota-status service is still `quota-status -p postfix` on port 12340; 2.4 wants
#   its inet_listener named. 90-quota.conf is written on every run (2.3's "only if not
#   written yet" guard grepped for a 2.3 line).
# * Mailboxes: conf/dovecot-mailboxes.conf's content is still valid 2.4 syntax; the same
#   namespace/mailbox/special_use/auto settings are written inline to 15-mailboxes.conf.
# * disable_plaintext_auth=yes -> auth_allow_cleartext=no (renamed in 2.4; same meaning:
#   cleartext mechanisms only over TLS). auth_mechanisms unchanged ("plain login").
# * TLS: ssl_cert=<file / ssl_key=<file -> ssl_server_cert_file / ssl_server_key_file
#   (plain paths, no "<"); ssl_dh=<file -> ssl_server_dh_file; ssl_prefer_server_ciphers=no
#   -> ssl_server_prefer_ciphers=client; ssl_dh_parameters_length no longer exists and is
#   dropped. ssl=required, TLSv1.2 minimum and MIAB's cipher list unchanged.
# * Plain IMAP/POP3 listeners are still disabled with `port = 0` in 10-master.conf, and
#   IMAP 143 is re-opened on 127.0.0.1 only (for Nextcloud, #1577). The inet_listener
#   setting `address` is called `listen` in 2.4 (for LMTP 127.0.0.1:10026 too).
# * pop3_uidl_format "%08Xu%08Xv" -> "%{uid | hex(8)}%{uidvalidity | hex(8)}" (same UIDLs).
# * Sieve: the plugin {} settings become sieve_script blocks: sieve_before (the spam
#   script) and sieve_before2 (global_before dir) -> two `type = before` scripts,
#   sieve_after -> a `type = after` script, sieve + sieve_dir -> the personal script
#   storage (path = the user's script dir, active_path = the user's .sieve link).
#   sieve_redirect_envelope_from keeps its name. The spam script gets a lower
#   sieve_script_precedence than the global_before directory so it runs first, as
#   sieve_before ran before sieve_before2.
# * log_path, default_process_limit, default_vsz_limit, imap_idle_notify_interval,
#   postmaster_address, mail_privileged_group, first_valid_uid, mail_max_userip_connections
#   kept their 2.3 names and values. editconf.py is used for the key=value files as MIAB
#   does; multi-line blocks go to our own 99-local*.conf files as MIAB does.
# * The inotify sysctl (max_user_instances=1024) goes to /etc/sysctl.d/60-mailinabox-
#   dovecot.conf: Debian 13 ships no /etc/sysctl.conf (editconf.py refuses a missing file,
#   and systemd-sysctl only reads sysctl.d).
# * Not changed on purpose: `doveconf` warns that service auth/anvil client_limit=1000 is
#   below the maximum load implied by default_process_limit (2 cores -> 500). Dovecot 2.3
#   prints the same warnings for MIAB's settings (MIAB issue #535); they are not about
#   obsolete settings. Cleartext login on 127.0.0.1:143 works as on 2.3 (Dovecot treats
#   local connections as secure), which is what Nextcloud's IMAP login there needs.
# * A box upgraded in place from 2.3 still has v75's 99-local-spampd.conf (dovecot-antispam's
#   plugin {} settings, see spamassassin.sh), which Dovecot 2.4 cannot read and which no 2.4
#   script rewrites before this one restarts Dovecot: removed here. Every other v75 file this
#   script and mail-users.sh wrote is written again in 2.4 syntax.
# * Unchanged: sievec of the global spam script, permissions, the
#   storage directories, the ufw rules (skipped with DISABLE_FIREWALL), restart_service.

source setup/functions.sh # load our functions
source /etc/mailinabox.conf # load global vars

# v75's antispam settings on a box upgraded from 2.3 (see the note above).
rm -f /etc/dovecot/conf.d/99-local-spampd.conf

echo "Installing Dovecot (IMAP server)..."
apt_install \
	dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-sqlite sqlite3 \
	dovecot-sieve dovecot-managesieved

CONFD=/etc/dovecot/conf.d
MAILDIR_TEMPLATE="$STORAGE_ROOT/mail/mailboxes/%{user | domain}/%{user | username}"
SIEVE_TEMPLATE="$STORAGE_ROOT/mail/sieve/%{user | domain}/%{user | username}"

# ### Daemon limits and logging

# 250 processes per core; a third of RAM+swap as the per-process memory cap; everything
# logged to the mail log (values as MIAB v75).
tools/editconf.py $CONFD/10-master.conf \
	default_process_limit="$(($(nproc) * 250))" \
	default_vsz_limit="$(($(free -tm | tail -1 | awk '{print $2}') / 3))M" \
	log_path=/var/log/mail.log

# More inotify instances for IMAP IDLE (takes effect at the next boot). Debian 13 has no
# /etc/sysctl.conf any more: the setting goes to a sysctl.d drop-in.
echo "fs.inotify.max_user_instances=1024" > /etc/sysctl.d/60-mailinabox-dovecot.conf

# ### Mail storage

# Maildir under $STORAGE_ROOT/mail/mailboxes/DOMAIN/USER. Debian's mbox defaults and its
# /var/mail INBOX and /home/USER home templates are commented out (-e with an empty value).
tools/editconf.py $CONFD/10-mail.conf \
	mail_driver=maildir \
	"mail_path=$MAILDIR_TEMPLATE" \
	mail_privileged_group=mail \
	first_valid_uid=0
tools/editconf.py $CONFD/10-mail.conf -e \
	mail_home= \
	mail_inbox_path=

# Special folders (INBOX, Spam, Drafts, Sent, Trash, Archive created and subscribed).
cat > $CONFD/15-mailboxes.conf << 'EOF'
## Written by the Dovecot 2.4 translation of Mail-in-a-Box's mail-dovecot.sh
## (from conf/dovecot-mailboxes.conf). Do not edit.

namespace inbox {
  # auto = subscribe creates and subscribes the folder. The sieve spam rule needs Spam;
  # Z-Push's IMAP backend is configured with the same names.
  mailbox INBOX {
    auto = subscribe
  }
  mailbox Spam {
    special_use = \Junk
    auto = subscribe
  }
  mailbox Drafts {
    special_use = \Drafts
    auto = subscribe
  }
  mailbox Sent {
    special_use = \Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \Trash
    auto = subscribe
  }
  mailbox Archive {
    special_use = \Archive
    auto = subscribe
  }

  # Alternative names some clients use; flagged but not created.
  mailbox "Sent Messages" {
    special_use = \Sent
  }
  mailbox Junk {
    special_use = \Junk
  }
}
EOF

# ### Quota

cat > $CONFD/90-quota.conf << 'EOF'
## Written by the Dovecot 2.4 translation of Mail-in-a-Box's mail-dovecot.sh. Do not edit.

mail_plugins {
  quota = yes
}
protocol imap {
  mail_plugins {
    imap_quota = yes
  }
}

# Maildir++ quota (maildirsize files). The limit per user is the userdb field
# quota_storage_size (auth-sql.conf.ext); 0 means unlimited. The grace (how far the last
# delivered mail may take a user over the limit) is 10% of that limit, which 2.4 can only
# express as a size, so the userdb returns it per user too (quota_storage_grace).
quota "User quota" {
  driver = maildir
}

quota_status_success = DUNNO
quota_status_nouser = DUNNO
quota_status_overquota = "522 5.2.2 Mailbox is full"
# 2.3 answered a mail bigger than the whole limit with quota_status_overquota when
# quota_status_toolarge was unset; 2.4 answers it with an empty "action=", so say it.
quota_status_toolarge = "522 5.2.2 Mailbox is full"

# Postfix policy service answering for recipients' quota.
service quota-status {
  executable = quota-status -p postfix
  inet_listener quota-status {
    port = 12340
  }
}
EOF

# ### IMAP/POP

# Cleartext mechanisms only over TLS; PLAIN and LOGIN.
tools/editconf.py $CONFD/10-auth.conf \
	auth_allow_cleartext=no \
	"auth_mechanisms=plain login"

# TLS with the certificate and DH parameters written by MIAB's ssl.sh, Mozilla
# "intermediate" ciphers, TLSv1.2 minimum, client's cipher preference.
tools/editconf.py $CONFD/10-ssl.conf \
	ssl=required \
	"ssl_server_cert_file=$STORAGE_ROOT/ssl/ssl_certificate.pem" \
	"ssl_server_key_file=$STORAGE_ROOT/ssl/ssl_private_key.pem" \
	"ssl_min_protocol=TLSv1.2" \
	"ssl_cipher_list=ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384" \
	"ssl_server_prefer_ciphers=client" \
	"ssl_server_dh_file=$STORAGE_ROOT/ssl/dh2048.pem"

# No cleartext IMAP (143) or POP3 (110) to the world: only IMAPS 993 and POP3S 995.
sed -i "s/#port = 143/port = 0/" $CONFD/10-master.conf
sed -i "s/#port = 110/port = 0/" $CONFD/10-master.conf

# IDLE "still here" every 4 minutes instead of 2.
tools/editconf.py $CONFD/20-imap.conf \
	imap_idle_notify_interval="4 mins"

# POP3 UIDLs from IMAP UIDVALIDITY and UID (same strings as 2.3's %08Xu%08Xv).
tools/editconf.py $CONFD/20-pop3.conf \
	"pop3_uidl_format=%{uid | hex(8)}%{uidvalidity | hex(8)}"

# ### LDA (LMTP)

# LMTP for spampd on 127.0.0.1:10026; IMAP 143 on localhost only (Nextcloud's
# user_external, #1577); 40 IMAP connections per user and IP.
cat > $CONFD/99-local.conf << 'EOF'
## Written by the Dovecot 2.4 translation of Mail-in-a-Box's mail-dovecot.sh. Do not edit.
service lmtp {
  inet_listener lmtp {
    listen = 127.0.0.1
    port = 10026
  }
}

service imap-login {
  inet_listener imap {
    listen = 127.0.0.1
    port = 143
  }
}

protocol imap {
  mail_max_userip_connections = 40
}
EOF

# LMTP won't start without a postmaster address (the alias is made by the management daemon).
tools/editconf.py $CONFD/15-lda.conf \
	"postmaster_address=postmaster@$PRIMARY_HOSTNAME"

# Debian's LMTP strips the domain from the recipient; our users are full addresses.
sed -i 's/^\(\s*\)\(auth_username_format\s*=.*\)/\1#\2/' $CONFD/20-lmtp.conf

# ### Sieve

# Global spam script first, then the global_before directory, the user's own active
# script (managed over ManageSieve, stored outside the maildir), then global_after.
cat > $CONFD/99-local-sieve.conf << EOF
## Written by the Dovecot 2.4 translation of Mail-in-a-Box's mail-dovecot.sh. Do not edit.
protocol lmtp {
  mail_plugins {
    sieve = yes
  }
}

sieve_script spam {
  type = before
  precedence = 1
  path = /etc/dovecot/sieve-spam.sieve
}
sieve_script global_before {
  type = before
  precedence = 2
  path = $STORAGE_ROOT/mail/sieve/global_before
}
sieve_script personal {
  type = personal
  driver = file
  path = $SIEVE_TEMPLATE
  active_path = $SIEVE_TEMPLATE.sieve
}
sieve_script global_after {
  type = after
  path = $STORAGE_ROOT/mail/sieve/global_after
}

sieve_redirect_envelope_from = recipient
EOF

# The global spam rule, compiled now (Dovecot can't write next to it later).
cp conf/sieve-spam.txt /etc/dovecot/sieve-spam.sieve
sievec /etc/dovecot/sieve-spam.sieve

# ### Permissions

chown -R mail:dovecot /etc/dovecot
chmod -R o-rwx /etc/dovecot

mkdir -p "$STORAGE_ROOT/mail/mailboxes"
chown -R mail:mail "$STORAGE_ROOT/mail/mailboxes"

mkdir -p "$STORAGE_ROOT/mail/sieve/global_before" "$STORAGE_ROOT/mail/sieve/global_after"
chown -R mail:mail "$STORAGE_ROOT/mail/sieve"

# Firewall: IMAPS, POP3S, ManageSieve.
ufw_allow imaps
ufw_allow pop3s
ufw_allow sieve

restart_service dovecot
