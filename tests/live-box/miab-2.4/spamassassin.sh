#!/bin/bash
#
# Translation of Mail-in-a-Box v75 setup/spamassassin.sh to Dovecot 2.4 (Debian 13) for the
# live-box test; what changed:
#
# * Same pipeline: Postfix -> spampd (LMTP on 127.0.0.1:10025, SpamAssassin) -> Dovecot
#   LMTP on 127.0.0.1:10026; spam is filed into Spam by the global sieve script that
#   mail-dovecot.sh installs (/etc/dovecot/sieve-spam.sieve, run as a `type = before`
#   sieve_script).
# * dovecot-antispam is not in Debian 13 (the plugin was never ported to Dovecot 2.4), so it
#   is dropped from the package list and its configuration is not written: no
#   `mail_plugins = $mail_plugins antispam` edits of 20-imap.conf / 20-pop3.conf (a 2.4
#   config would refuse both that syntax and the unknown plugin) and no
#   99-local-spampd.conf plugin {} block (plugin {} no longer exists in 2.4; on a box
#   upgraded from 2.3, mail-dovecot.sh removes v75's). Moving mail in
#   or out of Spam therefore no longer trains the Bayes filter. /usr/local/bin/sa-learn-pipe.sh,
#   mail_access_groups=spampd and the Bayes files are still set up as MIAB does, so manual
#   `sa-learn` and a later IMAPSieve-based replacement work the same way.
# * spampd 2.62 in Debian 13 reads /etc/spampd.cfg (its unit runs
#   `spampd --config /etc/spampd.cfg`); /etc/default/spampd is gone. MIAB's
#   DESTPORT=10026, ADDOPTS="--maxsize=2000" and LOCALONLY=0 become `relayport 10026`,
#   `maxsize 2000` and `local-only 0` there (editconf.py -s, space-separated). A box upgraded
#   in place from 2.3 keeps Debian 12's spampd 2.61, which still reads /etc/default/spampd:
#   there the v75 settings are written as before.
# * Debian 13's spamassassin has no /etc/default/spamassassin (rule updates run from
#   spamassassin-maintenance.timer), and editconf.py refuses a missing file: it is created
#   empty first, so CRON=1 is still recorded as on 2.3 boxes (harmless, nothing reads it).
# * Unchanged: pyzor home and server, report_safe 0 and the added headers, the SPF/DMARC
#   Authentication-Results rules, the Bayes path and modes, restarts of spampd and dovecot.

source /etc/mailinabox.conf # get global vars
source setup/functions.sh # load our functions

# ### Packages

# libmail-dkim-perl makes SpamAssassin's DKIM checks work (Debian bug #689414).
echo "Installing SpamAssassin..."
apt_install spampd razor pyzor libmail-dkim-perl

# Let SpamAssassin fetch rule updates.
[ -f /etc/default/spamassassin ] || touch /etc/default/spamassassin
tools/editconf.py /etc/default/spamassassin \
	CRON=1

# Pyzor: a sane config directory and the public server written directly (no discovery, #496).
rm -rf ~/.pyzor
tools/editconf.py /etc/spamassassin/local.cf -s \
	pyzor_options="--homedir /etc/spamassassin/pyzor"
mkdir -p /etc/spamassassin/pyzor
echo "public.pyzor.org:24441" > /etc/spamassassin/pyzor/servers

# ### spampd

# Relay to Dovecot's LMTP on 10026, scan messages up to 2000 KB, allow network checks
# (Pyzor, DKIM, DNS).
if [ -f /etc/spampd.cfg ]; then
	tools/editconf.py /etc/spampd.cfg -s \
		relayport=10026 \
		maxsize=2000 \
		local-only=0
else
	tools/editconf.py /etc/default/spampd \
		DESTPORT=10026 \
		ADDOPTS="\"--maxsize=2000\"" \
		LOCALONLY=0
fi

# Only add X-Spam-* headers (with the report and score); don't wrap spam in a new message.
tools/editconf.py /etc/spamassassin/local.cf -s \
	report_safe=0 \
	"add_header all Report"=_REPORT_ \
	"add_header all Score"=_SCORE_

# ### SPF and DMARC results as spam score

# OpenDKIM/OpenDMARC add Authentication-Results headers; score them instead of rejecting.
# The hostname is a regex here, so its dots are escaped.
host_re="${PRIMARY_HOSTNAME//./\\.}"

# sa_rule NAME RESULT DESCRIPTION SCORE: one header rule on our Authentication-Results.
sa_rule() {
	printf 'header %s Authentication-Results =~ /%s; %s/\ndescribe %s %s\nscore %s %s\n\n' \
		"$1" "$host_re" "$2" "$1" "$3" "$1" "$4"
}
{
	echo "# Evaluate DMARC Authentication-Results"
	sa_rule DMARC_PASS 'dmarc=pass' 'DMARC check passed' -0.1
	sa_rule DMARC_NONE 'dmarc=none' 'DMARC record not found' 0.1
	sa_rule DMARC_FAIL_NONE 'dmarc=fail \(p=none' 'DMARC check failed (p=none)' 2.0
	sa_rule DMARC_FAIL_QUARANTINE 'dmarc=fail \(p=quarantine' 'DMARC check failed (p=quarantine)' 5.0
	sa_rule DMARC_FAIL_REJECT 'dmarc=fail \(p=reject' 'DMARC check failed (p=reject)' 10.0
	echo "# Evaluate SPF Authentication-Results"
	sa_rule SPF_PASS 'spf=pass' 'SPF check passed' -0.1
	sa_rule SPF_NONE 'spf=none' 'SPF record not found' 2.0
	sa_rule SPF_FAIL 'spf=fail' 'SPF check failed' 5.0
} > /etc/spamassassin/miab_spf_dmarc.cf

# ### Bayes

# Learning data in the storage area: owned by spampd (which reads it while filtering),
# writable by the mail user (sa-learn-pipe.sh) and debian-spamd (the daily update).
tools/editconf.py /etc/spamassassin/local.cf -s \
	bayes_path="$STORAGE_ROOT/mail/spamassassin/bayes" \
	bayes_file_mode=0666

mkdir -p "$STORAGE_ROOT/mail/spamassassin"
chown -R spampd:spampd "$STORAGE_ROOT/mail/spamassassin"

# Dovecot's mail processes get the spampd group for access to the learning files.
tools/editconf.py /etc/dovecot/conf.d/10-mail.conf \
	mail_access_groups=spampd

# The learning helper (spools stdin to a file and runs sa-learn on it). On 2.3 the
# antispam plugin called it on moves into/out of Spam; see the note above.
rm -f /usr/bin/sa-learn-pipe.sh
cat > /usr/local/bin/sa-learn-pipe.sh << 'EOF'
cat<&0 >> /tmp/sendmail-msg-$$.txt
/usr/bin/sa-learn $* /tmp/sendmail-msg-$$.txt > /dev/null
rm -f /tmp/sendmail-msg-$$.txt
exit 0
EOF
chmod a+x /usr/local/bin/sa-learn-pipe.sh

# Empty Bayes databases if none yet, then group-writable.
sudo -u spampd /usr/bin/sa-learn --sync 2>/dev/null
chmod -R 660 "$STORAGE_ROOT/mail/spamassassin"
chmod 770 "$STORAGE_ROOT/mail/spamassassin"

restart_service spampd
restart_service dovecot
