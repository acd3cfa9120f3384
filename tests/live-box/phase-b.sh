# shellcheck shell=bash
# Phase B of the live-box test, sourced by `run` once the stock box passed phase A: the
# sidecars package installed, `miabctl sidecars enable`, every check after each of MIAB's
# own maintenance events, a restore from the backup taken meanwhile, `disable`.

# --- the package, then enable ----------------------------------------------------------
step "box: Z-Push's IMAP backend configuration, as setup/zpush.sh writes it" inbox zpush

step "sidecars: dpkg -i the package (installing switches nothing)" install_deb
record_stock >"$LB_STATE/record-before-enable"
record_stock "" nomain >"$LB_STATE/record-before-enable-nomain"
box_exec cp /etc/postfix/main.cf /root/main.cf.before-enable
step "sidecars: miabctl sidecars enable" box_exec miabctl sidecars enable

# --- checks after enable ----------------------------------------------------------------
check_all() {
	local what=$1
	step "$what: miabctl sidecars status (polled up to 70 s)" poll_status
	step "$what: sockets, ports, neutralised postgrey/opendkim/opendmarc" check_wiring
	step "$what: (a) tests/test_mail.py" check_test_mail
	step "$what: (b) a submission is DKIM-signed (dkimverify)" check_dkim_signed "$ME" "$PW_ME" 587
	step "$what: (c) a foreign client is greylisted (450 4.2.0)" check_greylisted
	step "$what: (d) SMTP AUTH and IMAP for a normal user" check_normal_login
	step "$what: (d) app-password-only user: main password refused, app password works" check_app_password
	step "$what: (e) postmap -q through miab-lookup's socketmap" check_socketmap
	step "$what: (f) no ESC byte in the sidecars' journal" check_journal_plain
	step "$what: (g) miabctl sidecars status" box_exec miabctl sidecars status
	step "$what: (h) doveconf -n: our passdb first (checkpassword on Dovecot 2.3)" check_doveconf
	step "$what: (j) Munin plugin (munin-run), man pages, miabctl explain" check_observability
}
check_all "enabled"

# --- Z-Push: its mail goes through SMTP AUTH, so containment counts it -------------------
last_hour_messages() {
	box_exec miabctl --json held --all | python3 -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r["login"] == sys.argv[1]]
print(rows[0]["last_hour"]["messages"] if rows else 0)' "$1"
}
check_zpush() {
	local before after
	box_exec grep -n "IMAP_SMTP_METHOD\|miab-sidecars" "$ZPUSH_CONF"
	box_exec grep -qx "define('IMAP_SMTP_METHOD', 'smtp'); // miab-sidecars" "$ZPUSH_CONF"
	box_exec miabctl sidecars status | grep -F "Z-Push (ActiveSync) sends through SMTP AUTH on 127.0.0.1:465"
	before=$(last_hour_messages "$ME")
	# What Z-Push's imap backend now does: PEAR Mail's smtp driver to ssl://127.0.0.1:465
	# with the user's own login and password.
	box_exec python3 /opt/miab-livebox/probe.py send "$ME" "$PW_ME" "$ME" "activesync-style" 465
	after=$(last_hour_messages "$ME")
	echo "containment's count for $ME in the last hour: $before -> $after"
	[ "$after" = $((before + 1)) ]
}
step "Z-Push: enable switched it to SMTP AUTH on 465; a message sent that way is counted" check_zpush

# --- containment under systemd: a hijacked login --------------------------------------
# alice has no history: 60 messages to new recipients in one session put all past the floor
# of 50 on hold; the administrator (administrator@ -> me@) gets the notice over SMTP from the
# hardened unit; release delivers; suspension refuses SMTP AUTH and IMAP until lifted.
held_count() {
	box_exec postqueue -j | python3 -c '
import json, sys
print(sum(1 for l in sys.stdin if json.loads(l)["queue_name"] == "hold"))'
}
check_containment() {
	local i n out
	box_exec python3 /opt/miab-livebox/probe.py burst "$ALICE" "$PW_ALICE" 60 "$ME" containment
	for i in $(seq 1 60); do
		n=$(held_count)
		[ "$n" = 10 ] && break
		sleep 1
	done
	[ "$n" = 10 ] || { echo "$n messages held, 10 expected"; box_exec postqueue -p | tail -20; return 1; }
	echo "postqueue -j: 10 messages in the hold queue"
	n=$(box_exec journalctl -a -o cat --no-pager -u miab-policyd | grep -c "sending far past the login's own history" || true)
	[ "$n" = 1 ] || { echo "$n hold lines in miab-policyd's journal, 1 expected"; return 1; }
	box_exec python3 /opt/miab-livebox/probe.py fetch "$ME" "$PW_ME" "Outgoing mail from $ALICE is held" /tmp/live-box-notice.eml
	box_exec grep -F "miabctl held release $ALICE" /tmp/live-box-notice.eml
	out=$(box_exec miabctl held)
	echo "$out"
	echo "$out" | grep -q "^$ALICE	HELD since .*: 51 new recipients in the last hour (limit 50)" ||
		{ echo "miabctl held does not show $ALICE"; return 1; }
	out=$(box_exec miabctl held release "$ALICE")
	echo "$out"
	[ "$out" = "$ALICE may send again; 10 held messages released" ] || return 1
	for i in $(seq 1 60); do
		n=$(held_count)
		[ "$n" = 0 ] && break
		sleep 1
	done
	[ "$n" = 0 ] || { echo "$n messages still held after release"; return 1; }
	# miabctl ran as root: the daemon can still write its DB (the -wal file is its own).
	box_exec ls -l /home/user-data/mail/policyd/
	box_exec python3 /opt/miab-livebox/probe.py send "$ALICE" "$PW_ALICE" "$ME" "after release" 587
	check_suspended
}
step "containment: a hijacked login is held, the administrator told, released, suspended" check_containment

# --- the brake: a known device outlives a restart of miab-authd --------------------------
step "brake: alice's phone still logs in after a restart of miab-authd while strangers keep failing" check_brake

# --- MIAB's own maintenance, each followed by every check -------------------------------
# The nightly backup, as management/daily_tasks.sh runs it (in MIAB's venv, en_US.UTF-8).
record_state_rows() {
	box_exec python3 - "$ST" <<-'EOF'
	import sqlite3, sys
	st = sys.argv[1]
	def rows(db, q):
	    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
	    try:
	        return [r[0] for r in con.execute(q)]
	    finally:
	        con.close()
	for k in rows(st + "/mail/policyd/greylist.sqlite", "SELECT key FROM triplets"):
	    print("triplet", k)
	for k in rows(st + "/mail/authd/app-password-use.sqlite", "SELECT id FROM app_password_use"):
	    print("app_password_use", k)
	EOF
}
nightly_backup() {
	record_state_rows >"$LB_STATE/rows-at-backup"
	grep -q '^triplet ' "$LB_STATE/rows-at-backup" || { echo "no greylist triplet to back up"; return 1; }
	grep -q '^app_password_use ' "$LB_STATE/rows-at-backup" || { echo "no app-password use to back up"; return 1; }
	box_exec bash -c 'cd /root/mailinabox && export LANGUAGE=en_US.UTF-8 LC_ALL=en_US.UTF-8 LANG=en_US.UTF-8 LC_TYPE=en_US.UTF-8 && management/backup.py'
	box_exec ls "$ST/backup/encrypted"
}
step "event: MIAB's nightly backup (management/backup.py)" nightly_backup
check_all "after backup"

restore_check() {
	box_exec bash -c 'cd /root/mailinabox && rm -rf /tmp/live-box-restore && export LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8 && management/backup.py --restore /tmp/live-box-restore'
	box_exec bash -c 'cat >/tmp/live-box-rows-at-backup' <"$LB_STATE/rows-at-backup"
	box_exec python3 - /tmp/live-box-restore /tmp/live-box-rows-at-backup <<-'EOF'
	import sqlite3, sys
	r = sys.argv[1]
	dbs = {"triplet": (r + "/mail/policyd/greylist.sqlite", "SELECT 1 FROM triplets WHERE key=?"),
	       "app_password_use": (r + "/mail/authd/app-password-use.sqlite", "SELECT 1 FROM app_password_use WHERE id=?")}
	want = [l.rstrip("\n").split(" ", 1) for l in open(sys.argv[2]) if " " in l]
	for name, (db, _) in dbs.items():
	    con = sqlite3.connect(db)
	    ok = con.execute("PRAGMA integrity_check").fetchone()[0]
	    print(db, "integrity_check:", ok)
	    if ok != "ok": sys.exit(1)
	    con.close()
	for kind, key in want:
	    db, q = dbs[kind]
	    con = sqlite3.connect(db)
	    if not con.execute(q, (key,)).fetchone():
	        sys.exit("restored %s lacks %s %s" % (db, kind, key))
	    con.close()
	print(len(want), "rows present at backup time are in the restored copy")
	EOF
}
step "restore: duplicity restore of that backup; the sidecars' sqlite state intact" restore_check

postgrey_cron() {
	box_exec bash -c '/etc/cron.daily/mailinabox-postgrey-whitelist; service postgrey restart'
}
step "event: postgrey whitelist cron + service postgrey restart" postgrey_cron
check_all "after postgrey cron"

domain_change() {
	mail_cli add-user "$BOB" "$PW_BOB"
	box_exec cat /etc/opendkim/SigningTable
}
step "event: a new domain (mailconfig.py add_mail_user + kick: opendkim restart)" domain_change
check_all "after domain change"
step "after domain change: mail from the new domain is DKIM-signed" check_dkim_signed "$BOB" "$PW_BOB" 587

upgrade() {
	# MIAB's next version changes main.cf values of its own and one list the sidecars edit;
	# its setup runs all over again, Z-Push's configuration included.
	inbox next_version
	inbox miab "${MIAB_MAIL_SCRIPTS[@]}"
	inbox zpush
}
step "event: upgrade to MIAB's next version (its mail setup scripts and Z-Push's config again)" upgrade
check_all "after upgrade"
step "after upgrade: Z-Push sends through SMTP AUTH again" box_exec grep -qx "define('IMAP_SMTP_METHOD', 'smtp'); // miab-sidecars" "$ZPUSH_CONF"

# MIAB's editconf.py rewrites main.cf in place (truncate, then write): sixty rewrites in a row
# while the path unit runs repair after each; afterwards every parameter of the stock file
# is still there and the wiring is whole.
editconf_race() {
	box_exec bash -c '
		cd /root/mailinabox
		for i in $(seq 1 60); do
			tools/editconf.py /etc/postfix/main.cf smtpd_sasl_path=private/auth message_size_limit=157286400
		done'
	poll_status
	box_exec python3 - /root/main.cf.before-enable /etc/postfix/main.cf <<-'EOF'
	import sys
	def keys(p):
	    return {l.split("=", 1)[0].strip() for l in open(p) if l.strip() and not l[0].isspace() and not l.startswith("#") and "=" in l}
	missing = keys(sys.argv[1]) - keys(sys.argv[2])
	if missing:
	    sys.exit("parameters lost from main.cf: %s" % sorted(missing))
	print("all %d parameters of the stock main.cf are still there" % len(keys(sys.argv[1])))
	EOF
}
step "event: editconf.py rewriting main.cf sixty times while repair runs" editconf_race

step "event: apt-get install --reinstall postfix" box_exec apt-get install --reinstall -y -q postfix
check_all "after postfix reinstall"

step "event: reboot of the box" reboot_box
check_all "after reboot"

# --- disable: back to the stock box -----------------------------------------------------
# First a disable that cannot finish: postgrey does not start again. The box must stay
# switched, whole, and say so.
failing_disable() {
	local out rc
	box_exec bash -c 'printf "[Service]\nExecStartPre=/bin/false\n" >/etc/systemd/system/postgrey.service.d/zz-livebox-broken.conf && systemctl daemon-reload'
	set +e
	out=$(box_exec miabctl sidecars disable 2>&1)
	rc=$?
	set -e
	echo "$out"
	[ "$rc" != 0 ] || { echo "disable succeeded with postgrey broken"; return 1; }
	echo "$out" | grep -q "disable stopped while postgrey" || return 1
	echo "$out" | grep -q "still switched to the sidecars" || return 1
	box_exec test -e /var/lib/miab-sidecars/enabled
	box_exec bash -c 'rm /etc/systemd/system/postgrey.service.d/zz-livebox-broken.conf && systemctl daemon-reload'
}
step "sidecars: a disable that fails (postgrey does not start) leaves the box switched and says so" failing_disable
check_all "after a failed disable"
step "sidecars: miabctl sidecars disable" box_exec miabctl sidecars disable
step "disabled: master.cf, Z-Push, dovecot conf.d, units match the record" compare_record "$LB_STATE/record-before-enable-nomain" nomain
# main.cf: the stock file's settings with exactly the upgrade's two changes, and no line of
# ours left, not even one MIAB's editconf.py commented out (its own "#old" lines are the
# upgrade's and stay).
main_cf_is_upgraded_stock() {
	box_exec python3 - /root/main.cf.before-enable /etc/postfix/main.cf <<-'EOF'
	import sys
	def settings(text):
	    return [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
	want = open(sys.argv[1]).read()
	want = want.replace("message_size_limit=134217728", "message_size_limit=157286400")
	want = want.replace("reject_unlisted_recipient,check_policy_service inet:127.0.0.1:10023", "reject_unlisted_recipient,reject_non_fqdn_recipient,check_policy_service inet:127.0.0.1:10023")
	got = open(sys.argv[2]).read()
	if settings(got) != settings(want):
	    import difflib
	    sys.stdout.write("\n".join(difflib.unified_diff(settings(want), settings(got), "expected", "main.cf", lineterm="")))
	    sys.exit("main.cf's settings are not the stock ones with the upgrade's changes")
	keys = ("virtual_mailbox_domains", "virtual_mailbox_maps", "virtual_alias_maps",
	        "smtpd_sender_login_maps", "smtpd_sasl_path", "smtpd_milters", "milter_default_action",
	        "smtpd_sender_restrictions", "smtpd_recipient_restrictions", "smtpd_end_of_data_restrictions")
	ours = [l for l in got.splitlines() if "miab-" in l or l.lstrip("#").startswith(tuple(k + " = " for k in keys))]
	if ours:
	    sys.exit("lines of ours left in main.cf: %s" % ours)
	print("main.cf: the stock settings with the upgrade's message_size_limit and recipient list, no line of ours")
	EOF
}
step "disabled: main.cf keeps the upgrade's values and has none of ours" main_cf_is_upgraded_stock
step "disabled: postgrey, opendkim, opendmarc run again" stock_running
step "disabled: tests/test_mail.py on the stock box" check_test_mail
step "disabled: users and aliases unchanged" users_unchanged

# --- Dovecot 2.3 -> 2.4 in place, while switched ----------------------------------------
# The box is switched again, then its Dovecot packages are replaced by Debian 13's (with
# what they pull in), taking the maintainer's new configuration files (ucf's too), then
# MIAB's next version's Dovecot setup runs (our 2.4 translation) and dpkg finishes. Until
# that setup has run, Dovecot 2.4 cannot start on MIAB's own 2.3 files (99-local*.conf),
# so dovecot-core's postinst fails to restart it and dpkg leaves it unconfigured: the same
# on a box that was never switched. Dovecot 2.4 cannot read the 2.3 file enable wrote
# either; repair (the path unit sees the new binary and dovecot.conf) writes the Lua one
# before the setup restarts Dovecot. Users log in throughout what follows.
step "upgrade: miabctl sidecars enable again" box_exec miabctl sidecars enable
step "upgrade: host downloads Debian 13's Dovecot 2.4 for this box" fetch_trixie_upgrade
upgrade_dovecot() {
	local rc
	set +e
	# shellcheck disable=SC2046,SC2086
	box_exec env DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFNEW=1 apt-get -q -y $(apt_upgrade_opts) \
		-o Dpkg::Options::=--force-confnew install -t trixie $LB_UPGRADE_PKGS \
		>"$LB_STATE/upgrade.log" 2>&1
	rc=$?
	set -e
	grep -E 'upgraded|newly installed|^dpkg: error|Fatal:' "$LB_STATE/upgrade.log" || true
	echo "apt-get exit $rc (dovecot-core's postinst cannot restart Dovecot on MIAB's 2.3 files yet)"
	box_exec dovecot --version | grep '^2\.4\.'
}
step "upgrade: apt-get install -t trixie Dovecot 2.4 (2.3 replaced in place)" upgrade_dovecot
step "upgrade: MIAB's next version's Dovecot setup (mail-dovecot.sh, mail-users.sh, spamassassin.sh for 2.4)" \
	inbox miab miab-2.4/mail-dovecot.sh miab-2.4/mail-users.sh miab-2.4/spamassassin.sh
step "upgrade: dpkg --configure -a finishes (Dovecot 2.4 starts)" box_exec dpkg --configure -a
upgraded_is_switched() {
	local i
	for i in $(seq 1 90); do
		box_exec grep -q 'driver = lua' /etc/dovecot/conf.d/00-miab-sidecars.conf &&
			box_exec systemctl is-active --quiet dovecot && break
		sleep 1
	done
	box_exec grep -n 'driver = lua' /etc/dovecot/conf.d/00-miab-sidecars.conf
	box_exec systemctl is-active dovecot
	box_exec journalctl -a -o cat --no-pager -u miab-sidecars-repair.service | grep -F 'Dovecot 2.4'
}
step "upgrade: repair wrote the Lua passdb and Dovecot 2.4 runs" upgraded_is_switched
step "upgraded: miabctl sidecars status (polled up to 70 s)" poll_status
step "upgraded: doveconf -n: the Lua passdb first" check_doveconf
step "upgraded: SMTP AUTH and IMAP for a normal user" check_normal_login
step "upgraded: app-password-only user: main password refused, app password works" check_app_password
step "upgraded: a suspended user is refused on SMTP AUTH and IMAP" check_suspended
step "upgraded: tests/test_mail.py" check_test_mail
echo "phase B passed"
