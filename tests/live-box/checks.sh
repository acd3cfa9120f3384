# shellcheck shell=bash
# What the live boxes share, the Debian 12 box (`run`, `phase-b.sh`) and the Debian 13 box
# (`trixie`): the users and passwords, the teardown, and the checks, each a function a step
# runs, inside the box through box_exec. Sourced after lib.sh.

ZPUSH_CONF=/usr/local/lib/z-push/backend/imap/config.php
REPO=$(cd "$HERE/../.." && pwd)
DEB_GLOB="$REPO/target/debian/miab-sidecars_*_amd64.deb"

PW_ME='Le-Box-Pass-1'
PW_ALICE='Alice-Pass-22'
PW_APP='App-Only-Main-3'
PW_BOB='Bob-NewDom-44'
ME=me@$LB_HOSTNAME
ALICE=alice@$LB_HOSTNAME
APPUSER=app@$LB_HOSTNAME
NEWDOM=newdomain.example
BOB=bob@$NEWDOM
ST=/home/user-data

cleanup() {
	local rc=$?
	[ -n "$LB_STATE" ] && box_pids
	if [ "$rc" != 0 ] && [ -n "$LB_BOX_PID" ]; then
		echo "-- the box's failed units and last mail log lines:"
		box_exec systemctl --failed --no-pager 2>/dev/null || true
		box_exec tail -n 40 /var/log/mail.log 2>/dev/null || true
		echo "-- the sidecars' journal (last 60 lines):"
		box_exec journalctl -a --no-pager -n 60 -u 'miab-*' 2>/dev/null || true
	fi
	local hold=${MIAB_LIVEBOX_HOLD:-0}
	if [ -n "$LB_BOX_PID" ] && { [ "$hold" = always ] || { [ "$hold" = 1 ] && [ "$rc" != 0 ]; }; }; then
		# For a look inside: nsenter -t PID -a; touch STATE/release to end.
		echo "-- holding the box: nsenter -t $LB_BOX_PID -a bash; touch $LB_STATE/release to tear down"
		while [ ! -e "$LB_STATE/release" ]; do sleep 2; done
	fi
	box_teardown
	exit "$rc"
}

inbox() { box_exec bash /opt/miab-livebox/box-setup.sh "$@"; }
mail_cli() { inbox mail "$@"; }
boot_box() { box_boot; box_wait_running; }

# --- the stock box and the switched one alike ------------------------------------------
check_test_mail() {
	box_exec bash -c "cd /root/mailinabox && timeout 300 python3 tests/test_mail.py $LB_HOSTNAME $ME '$PW_ME'"
}
# A message submitted with AUTH (port $3) from $1 to itself, fetched over IMAP, DKIM-verified
# against the box's DNS with python3-dkim's dkimverify.
check_dkim_signed() {
	local user=${1:-$ME} pw=${2:-$PW_ME} port=${3:-587} subj
	subj="live-box dkim $(date +%s%N)"
	box_exec python3 /opt/miab-livebox/probe.py send "$user" "$pw" "$user" "$subj" "$port"
	box_exec python3 /opt/miab-livebox/probe.py fetch "$user" "$pw" "$subj" /tmp/live-box-dkim.eml
	box_exec grep -m1 -i '^DKIM-Signature:' /tmp/live-box-dkim.eml
	box_exec bash -c 'dkimverify </tmp/live-box-dkim.eml'
}
check_greylisted() {
	# A new sender each time (steps run in subshells, so no counter survives): a triplet
	# seen more than the delay ago would rightly pass.
	local n
	n=$(date +%s%N)
	local out
	out=$(box_exec swaks --server 127.0.0.1 --port 25 --local-interface 127.0.0.9 \
		--ehlo mx.foreign.example --from "someone$n@foreign.example" --to "$ME" \
		--quit-after RCPT --timeout 60 2>&1 || true)
	echo "$out" | grep -E '^<\*\* ' || true
	echo "$out" | grep -Eq '^<\*\* +450 4\.2\.0 .*Greylisted' ||
		{ echo "$out"; echo "no 450 4.2.0 Greylisted for a foreign client"; return 1; }
}
check_normal_login() {
	box_exec python3 /opt/miab-livebox/probe.py smtp-auth "$ME" "$PW_ME" 465
	box_exec python3 /opt/miab-livebox/probe.py smtp-auth "$ME" "$PW_ME" 587
	box_exec python3 /opt/miab-livebox/probe.py imap-login "$ME" "$PW_ME"
}
check_stock() {
	check_test_mail
	check_dkim_signed
	check_greylisted
	check_normal_login
}

check_dns() {
	box_exec python3 - "$LB_HOSTNAME" <<-'EOF'
	import sys, dns.resolver, dns.reversename
	h = sys.argv[1]
	r = dns.resolver.Resolver()
	print("MX", [x.to_text() for x in r.resolve(h, "MX")])
	print("PTR 127.0.0.1", [x.to_text() for x in r.resolve(dns.reversename.from_address("127.0.0.1"), "PTR")])
	print("A foreign.example", [x.to_text() for x in r.resolve("foreign.example", "A")])
	try:
	    r.resolve("2.0.0.127.zen.spamhaus.org", "A")
	    sys.exit("zen.spamhaus.org answered")
	except dns.resolver.NXDOMAIN:
	    print("zen.spamhaus.org: NXDOMAIN")
	EOF
}
create_users() {
	# As setup/firstuser.sh: the first user is an admin, administrator@ goes to it.
	mail_cli add-user "$ME" "$PW_ME" admin
	mail_cli add-alias "administrator@$LB_HOSTNAME" "$ME"
	mail_cli add-user "$ALICE" "$PW_ALICE"
	mail_cli add-user "$APPUSER" "$PW_APP"
	# An alias with a permitted sender: mail to sales@ goes to me@, alice@ may send as it.
	mail_cli add-alias "sales@$LB_HOSTNAME" "$ME" "$ALICE"
	mail_cli kick
	mail_cli dump
}

# --- the sidecars ------------------------------------------------------------------------
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
# A suspended user is refused on SMTP AUTH and IMAP, and let in again once unsuspended.
check_suspended() {
	box_exec miabctl user suspend "$ALICE" --reason "live-box"
	expect_refused "suspended $ALICE" smtp-auth "$ALICE" "$PW_ALICE" 587
	expect_refused "suspended $ALICE" imap-login "$ALICE" "$PW_ALICE"
	box_exec miabctl user unsuspend "$ALICE"
	box_exec python3 /opt/miab-livebox/probe.py smtp-auth "$ALICE" "$PW_ALICE" 587
	box_exec python3 /opt/miab-livebox/probe.py imap-login "$ALICE" "$PW_ALICE"
}
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
		echo "postgrey, opendkim, opendmarc: service start/stop/restart succeed and start nothing"
		for pp in 9591:lookup 9592:policyd 9593:authd 9594:milter; do
			curl -fsS "http://127.0.0.1:${pp%%:*}/metrics" | grep -q "^# TYPE miab_" ||
				{ echo "no metrics from miab-${pp#*:} on ${pp%%:*}"; exit 1; }
		done
		echo "each daemon serves /metrics on loopback (9591-9594)"'
}
# What an operator watches: the Munin plugin enable linked (munin-run config and fetch), the
# man pages the package installed, miabctl explain on a delivered message and on an unknown
# queue id (exit 1).
check_observability() {
	box_exec bash -c '
		set -e
		[ "$(readlink /etc/munin/plugins/miab_sidecars)" = /usr/share/munin/plugins/miab_sidecars ] ||
			{ echo "enable did not link the Munin plugin"; ls -l /etc/munin/plugins; exit 1; }
		conf=$(munin-run miab_sidecars config)
		for g in miab_policyd_answers miab_authd_authentications miab_milter_results \
			miab_milter_signatures miab_lookup_queries miab_connections; do
			echo "$conf" | grep -qx "multigraph $g" || { echo "munin-run config: no $g"; echo "$conf"; exit 1; }
		done
		echo "$conf" | grep -qx "graph_category mail"
		fetch=$(munin-run miab_sidecars)
		echo "$fetch" | grep -Eq "^ok_password\.value [1-9][0-9]*$" ||
			{ echo "munin-run fetch: no successful login counted"; echo "$fetch"; exit 1; }
		echo "$fetch" | grep -Eq "^signed\.value [1-9][0-9]*$" ||
			{ echo "munin-run fetch: no signature counted"; echo "$fetch"; exit 1; }
		if echo "$fetch" | grep -E "^(dunno|ok_password|signed|found)\.value U$"; then
			echo "munin-run fetch: a daemon did not answer"; exit 1
		fi
		echo "munin-run miab_sidecars: $(echo "$conf" | grep -c ^multigraph) graphs, $(echo "$fetch" | grep -c "\.value") values"
		man -P cat miab-policyd | grep -q "policy service" || { echo "man miab-policyd"; exit 1; }
		man -P cat sidecars.toml | grep -q "journal_days" || { echo "man sidecars.toml"; exit 1; }
		man -P cat miabctl-explain >/dev/null
		echo "man miab-policyd, man sidecars.toml, man miabctl-explain"
		qid=$(grep -E "postfix/(lmtp|pipe|local|virtual)\[[0-9]+\]: [0-9A-Za-z]+: to=<.*status=sent" /var/log/mail.log |
			tail -1 | sed -E "s/.*\]: ([0-9A-Za-z]+): to=.*/\1/")
		[ -n "$qid" ] || { echo "no delivered message in mail.log"; exit 1; }
		story=$(miabctl explain "$qid")
		echo "$story" | grep -q "^  .*  milter " || { echo "explain $qid: no milter decision"; echo "$story"; exit 1; }
		echo "$story" | grep -q "status=sent" || { echo "explain $qid: no delivery"; echo "$story"; exit 1; }
		echo "miabctl explain $qid: $(echo "$story" | grep -c "^  [0-9]") decisions, delivered"
		set +e
		miabctl explain ZZZZZZZZZZ 2>/tmp/explain.err; rc=$?
		set -e
		[ "$rc" = 1 ] && grep -q "unknown queue id" /tmp/explain.err ||
			{ echo "explain of an unknown queue id: exit $rc"; cat /tmp/explain.err; exit 1; }'
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
	# Ours is checkpassword on Dovecot 2.3 and Lua on 2.4 (which has no checkpassword).
	local want=checkpassword
	case $(box_exec dovecot --version) in 2.3.*) ;; *) want=lua ;; esac
	box_exec bash -c 'doveconf -n' | python3 -c '
import re, sys
want = sys.argv[1]
drivers, cur = [], None
for line in sys.stdin:
    s = line.strip()
    if re.match(r"^passdb(\s+\S+)?\s*\{$", s): cur = []
    elif cur is not None and s.startswith("driver ="): drivers.append(s.split("=", 1)[1].strip()); cur = None
    elif s == "}": cur = None
print("doveconf -n passdb drivers, in order:", drivers)
if not drivers or drivers[0] != want: sys.exit("the first passdb is not " + want)
' "$want"
}
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
users_unchanged() {
	mail_cli dump >"$LB_STATE/users-after"
	# Everything phase A made is still there, unchanged (phase B added bob@ and app passwords).
	local missing
	missing=$(comm -23 <(sort "$LB_STATE/users-before") <(sort "$LB_STATE/users-after"))
	[ -z "$missing" ] || { echo "changed or gone after disable:"; echo "$missing"; return 1; }
	echo "users and aliases unchanged"
}
