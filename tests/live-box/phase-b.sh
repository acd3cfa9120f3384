# shellcheck shell=bash
# Phase B of the live-box test, sourced by `run` once the stock box passed phase A: the
# sidecars package installed, `miabctl sidecars enable`, every check after each of MIAB's
# own maintenance events, a restore from the backup taken meanwhile, `disable`.

# --- what enable must leave alone (and disable must put back byte for byte) -------------
ZPUSH_CONF=/usr/local/lib/z-push/backend/imap/config.php
# The files enable edits or must leave alone; with "nomain", all but main.cf (which a MIAB
# upgrade made while switched changes, and disable must keep that change).
record_stock() {
	box_exec bash -c '
		[ "${1:-}" = nomain ] || sha256sum /etc/postfix/main.cf
		sha256sum /etc/postfix/master.cf '"$ZPUSH_CONF"'
		find /etc/dovecot/conf.d -type f -print0 | sort -z | xargs -0 sha256sum
		echo "systemctl cat postgrey opendkim opendmarc: $(systemctl cat postgrey opendkim opendmarc 2>&1 | sha256sum)"' _ "${2:-}"
}
compare_record() {
	local now
	now=$(record_stock "" "${2:-}")
	if [ "$now" != "$(cat "$1")" ]; then
		diff -u "$1" <(echo "$now") || true
		echo "differs from the record taken before enable ($1)"
		return 1
	fi
	echo "master.cf, Z-Push's config.php, dovecot conf.d, the postgrey/opendkim/opendmarc units${2:+ (not main.cf)}$([ -n "${2:-}" ] || echo " and main.cf") match the record"
}
step "box: Z-Push's IMAP backend configuration, as setup/zpush.sh writes it" inbox zpush

install_deb() {
	local debs
	# shellcheck disable=SC2206
	debs=($DEB_GLOB)
	if [ ! -f "${debs[0]}" ]; then
		echo "no package at $DEB_GLOB: build it first with packaging/build-deb"
		return 1
	fi
	[ "${#debs[@]}" = 1 ] || { echo "more than one package: ${debs[*]}"; return 1; }
	echo "package: ${debs[0]}"
	record_stock >"$LB_STATE/record-before-install"
	mail_cli dump >"$LB_STATE/users-before"
	box_exec bash -c 'cat >/root/miab-sidecars.deb' <"${debs[0]}"
	box_exec dpkg -i /root/miab-sidecars.deb
	local f
	for f in /usr/bin/miabctl /usr/bin/miab-lookup /usr/bin/miab-policyd /usr/bin/miab-authd \
		/usr/bin/miab-milter /usr/bin/miab-checkpassword /etc/miab/sidecars.toml; do
		box_exec test -e "$f" || { echo "the package has no $f"; return 1; }
	done
	for f in miab-lookup.service miab-policyd.service miab-authd.service miab-milter.service \
		miab-sidecars-repair.path miab-sidecars-repair.timer miab-sidecars-repair.service; do
		box_exec systemctl cat "$f" >/dev/null || { echo "the package has no unit $f"; return 1; }
	done
	# The box's stand-in for a foreign client is 127.0.0.9 (Postfix's mynetworks is
	# 127.0.0.1/32 here): trust only what Postfix trusts, as an operator would.
	box_exec sed -i 's|^trusted_clients = .*|trusted_clients = ["127.0.0.1/32", "::1/128"]|' /etc/miab/sidecars.toml
	# Likewise the webmail proxy is 127.0.0.1 only: other loopback addresses are the
	# devices and strangers of the brake's checks.
	box_exec sed -i 's|^proxy_networks = .*|proxy_networks = ["127.0.0.1/32", "::1/128"]|' /etc/miab/sidecars.toml
	box_exec grep -n '^trusted_clients\|^proxy_networks' /etc/miab/sidecars.toml
	# Installing switches nothing.
	compare_record "$LB_STATE/record-before-install"
	box_exec systemctl is-active postgrey opendkim opendmarc postfix dovecot
}
step "sidecars: dpkg -i the package (installing switches nothing)" install_deb
record_stock >"$LB_STATE/record-before-enable"
record_stock "" nomain >"$LB_STATE/record-before-enable-nomain"
box_exec cp /etc/postfix/main.cf /root/main.cf.before-enable
step "sidecars: miabctl sidecars enable" box_exec miabctl sidecars enable

# --- checks after enable ----------------------------------------------------------------
# miabctl sidecars status, polled (config-rewriting events leave the repair a moment).
poll_status() {
	local i out=""
	for i in $(seq 1 70); do
		if out=$(box_exec miabctl sidecars status 2>&1); then
			echo "miabctl sidecars status: ok after ${i} try/tries"
			return 0
		fi
		sleep 1
	done
	echo "$out"
	echo "miabctl sidecars status still failing after 70 s"
	return 1
}
check_wiring() {
	local p
	for p in /var/spool/postfix/miab-lookup/socketmap /var/spool/postfix/miab-authd/auth /run/miab-authd/checkpassword; do
		box_exec test -S "$p" || { echo "no socket $p"; return 1; }
	done
	box_exec bash -c '
		for pp in 10023:miab-policyd 8891:miab-milter 8893:miab-milter; do
			port=${pp%%:*} prog=${pp#*:}
			line=$(ss -Hltnp "sport = :$port")
			echo "$port: $line"
			echo "$line" | grep -q "\"$prog\"" || { echo "port $port is not $prog"; exit 1; }
		done
		for s in postgrey opendkim opendmarc; do
			for c in start stop restart; do
				service "$s" "$c" || { echo "service $s $c failed"; exit 1; }
			done
		done
		sleep 1
		for s in postgrey opendkim opendmarc; do
			# Each runs as its own system user (postgrey sets its process name to
			# "postgrey --inet=...").
			if pgrep -u "$s" >/dev/null; then echo "$s runs: $(pgrep -a -u "$s")"; exit 1; fi
		done
		for pp in 10023:miab-policyd 8891:miab-milter 8893:miab-milter; do
			ss -Hltnp "sport = :${pp%%:*}" | grep -q "\"${pp#*:}\"" || { echo "port ${pp%%:*} lost after service starts"; exit 1; }
		done
		echo "postgrey, opendkim, opendmarc: service start/stop/restart succeed and start nothing"'
}
# probe.py "$2..." must be refused (exit 3: 535 for SMTP AUTH, a failed IMAP login); $1 says
# whose login it is, for the failure.
expect_refused() {
	local what=$1 rc
	shift
	set +e
	box_exec python3 /opt/miab-livebox/probe.py "$@"; rc=$?
	set -e
	[ "$rc" = 3 ] || { echo "$what: $1 not refused (exit $rc)"; return 1; }
}
check_app_password() {
	local f=$LB_STATE/app-password out
	if [ ! -s "$f" ]; then
		out=$(box_exec miabctl user app-password add "$APPUSER" --label t)
		echo "$out" | grep -Eo '([A-Za-z0-9]{4}-){4}[A-Za-z0-9]{4}' | head -1 >"$f"
		[ -s "$f" ] || echo "$out" | awk 'NF {l=$NF} END {print l}' >"$f"
		box_exec miabctl user app-password require "$APPUSER" on
	fi
	local app
	app=$(cat "$f")
	expect_refused "main password of an app-password-only user" smtp-auth "$APPUSER" "$PW_APP" 465
	expect_refused "main password of an app-password-only user" imap-login "$APPUSER" "$PW_APP"
	box_exec python3 /opt/miab-livebox/probe.py smtp-auth "$APPUSER" "$app" 465
	box_exec python3 /opt/miab-livebox/probe.py imap-login "$APPUSER" "$app"
}
check_socketmap() {
	local out
	out=$(box_exec postmap -q "$ME" socketmap:unix:/var/spool/postfix/miab-lookup/socketmap:mailboxes)
	echo "postmap -q $ME socketmap:...:mailboxes -> $out"
	[ -n "$out" ]
}
check_journal_plain() {
	local n
	n=$(box_exec journalctl -a -o cat --no-pager -u miab-policyd -u miab-lookup -u miab-authd -u miab-milter |
		tr -cd '\033' | wc -c)
	[ "$n" = 0 ] || { echo "$n ESC bytes in the sidecars' journal"; return 1; }
	echo "no ESC byte in the sidecars' journal"
}
check_doveconf() {
	box_exec bash -c 'doveconf -n' | python3 -c '
import re, sys
drivers, cur = [], None
for line in sys.stdin:
    s = line.strip()
    if re.match(r"^passdb(\s+\S+)?\s*\{$", s): cur = []
    elif cur is not None and s.startswith("driver ="): drivers.append(s.split("=", 1)[1].strip()); cur = None
    elif s == "}": cur = None
print("doveconf -n passdb drivers, in order:", drivers)
if "checkpassword" not in drivers: sys.exit("no checkpassword passdb")
if "sql" in drivers and drivers.index("sql") < drivers.index("checkpassword"):
    sys.exit("the sql passdb comes before checkpassword")
'
}
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
	step "$what: (h) doveconf -n: checkpassword passdb first" check_doveconf
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
	box_exec miabctl user suspend "$ALICE" --reason "live-box"
	expect_refused "suspended $ALICE" smtp-auth "$ALICE" "$PW_ALICE" 587
	expect_refused "suspended $ALICE" imap-login "$ALICE" "$PW_ALICE"
	box_exec miabctl user unsuspend "$ALICE"
	box_exec python3 /opt/miab-livebox/probe.py smtp-auth "$ALICE" "$PW_ALICE" 587
	box_exec python3 /opt/miab-livebox/probe.py imap-login "$ALICE" "$PW_ALICE"
}
step "containment: a hijacked login is held, the administrator told, released, suspended" check_containment

# --- the brake: a known device outlives a restart of miab-authd --------------------------
# alice's phone (127.0.0.20) logs in; thirty strangers (127.0.0.30-59) fail at once and brake
# the login; a stranger with the right password is refused; miab-authd restarts (as every
# package upgrade restarts it); thirty more strangers brake it again; the phone still gets in.
check_brake() {
	local n
	box_exec python3 /opt/miab-livebox/probe.py imap-from 127.0.0.20 "$ALICE" "$PW_ALICE"
	box_exec python3 /opt/miab-livebox/probe.py strangers "$ALICE" 30 30
	n=$(box_exec journalctl -a -o cat --no-pager -u miab-authd | grep -c "too many failures for login=\"$ALICE\"" || true)
	[ "$n" -ge 1 ] || { echo "miab-authd logged no brake for $ALICE"; return 1; }
	expect_refused "a stranger with alice's password" imap-from 127.0.0.99 "$ALICE" "$PW_ALICE"
	box_exec systemctl restart miab-authd
	box_exec bash -c 'for i in $(seq 1 100); do test -S /run/miab-authd/checkpassword && exit 0; sleep 0.1; done; exit 1'
	box_exec python3 /opt/miab-livebox/probe.py strangers "$ALICE" 30 60
	expect_refused "a stranger with alice's password after the restart" imap-from 127.0.0.98 "$ALICE" "$PW_ALICE"
	box_exec python3 /opt/miab-livebox/probe.py imap-from 127.0.0.20 "$ALICE" "$PW_ALICE"
	box_exec sqlite3 "$ST/mail/authd/known-devices.sqlite" "SELECT login, network FROM known_devices"
}
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

# After the boot, mail waits until spampd (10025) and Dovecot's LMTP (10026) answer, and
# whatever Postfix deferred meanwhile is sent now rather than at its next queue run.
reboot_box() {
	box_reboot
	inbox dns
	box_exec bash -c 'for i in $(seq 1 90); do
		ss -Hltn "sport = :10025" | grep -q . && ss -Hltn "sport = :10026" | grep -q . && break
		sleep 1
	done
	postqueue -f'
}
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
stock_running() {
	local i
	for i in $(seq 1 30); do
		if box_exec systemctl is-active --quiet postgrey opendkim opendmarc &&
			box_exec bash -c 'for p in 10023 8891 8893; do ss -Hltn "sport = :$p" | grep -q . || exit 1; done'; then
			box_exec bash -c 'ss -Hltnp "( sport = :10023 or sport = :8891 or sport = :8893 )"'
			return 0
		fi
		sleep 1
	done
	box_exec systemctl status --no-pager postgrey opendkim opendmarc || true
	return 1
}
step "disabled: postgrey, opendkim, opendmarc run again" stock_running
step "disabled: tests/test_mail.py on the stock box" check_test_mail
users_unchanged() {
	mail_cli dump >"$LB_STATE/users-after"
	# Everything phase A made is still there, unchanged (phase B added bob@ and app passwords).
	local missing
	missing=$(comm -23 <(sort "$LB_STATE/users-before") <(sort "$LB_STATE/users-after"))
	[ -z "$missing" ] || { echo "changed or gone after disable:"; echo "$missing"; return 1; }
	echo "users and aliases unchanged"
}
step "disabled: users and aliases unchanged" users_unchanged
echo "phase B passed"
