#!/bin/bash
# Runs inside the box (the harness copies this folder to /opt/miab-livebox): builds a stock
# Mail-in-a-Box v75 mail box the way setup/start.sh does, from the host's downloads.
#   box-setup.sh base          preseed Postfix, the packages MIAB's system.sh provides, locale
#   box-setup.sh conf          /etc/mailinabox.conf, storage user and root (questions/start.sh)
#   box-setup.sh miab SCRIPT.. run MIAB's setup scripts, as start.sh does, one after another
#                              (miab-2.4/SCRIPT: our Dovecot 2.4 translation of one)
#   box-setup.sh venv WHEELS DUPLICITY
#                              MIAB's management venv, duplicity, the backup key and
#                              target (setup/management.sh)
#   box-setup.sh dns           (re)start the stand-in DNS server as a transient unit
#   box-setup.sh mail ARGS..   management/mailconfig.py through miab-mail.py, in MIAB's venv
set -euo pipefail
HERE=/opt/miab-livebox
MIAB=/root/mailinabox
VENV=/usr/local/lib/mailinabox/env
export DEBIAN_FRONTEND=noninteractive

miab_env() {
	# What setup/start.sh exports before it sources the setup scripts.
	export LANGUAGE=en_US.UTF-8 LC_ALL=en_US.UTF-8 LANG=en_US.UTF-8 LC_TYPE=en_US.UTF-8
	export NCURSES_NO_UTF8_ACS=1 DISABLE_FIREWALL=1
}

cmd_base() {
	# Postfix as a fresh "Internet Site" install: the host may have it installed with other
	# answers (or as "No configuration", which has no main.cf), so purge it inside the box.
	# mynetworks is the installer's answer for this host only (Debian's default would be all
	# of 127.0.0.0/8): on a real box every foreign client has a public address; here the
	# foreign client is 127.0.0.9, which must be outside mynetworks, as it would be.
	if dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'install ok installed'; then
		apt-get purge -y -q postfix >/dev/null
		rm -rf /etc/postfix
	fi
	# After the purge, which forgets the host's answers.
	debconf-set-selections <<-EOF
	postfix postfix/main_mailer_type select Internet Site
	postfix postfix/mailname string $(hostname -f)
	postfix postfix/mynetworks string 127.0.0.1/32 [::1]/128
	EOF
	# What MIAB's setup/system.sh installs that the mail scripts rely on (sudo, cron,
	# rsyslog, curl, file), what management.sh installs for backups (duplicity,
	# virtualenv), and the harness's own clients. cron recommends an MTA: on Ubuntu, where
	# MIAB runs, that is Postfix (default-mta), so Postfix arrives here, preseeded, before
	# mail-postfix.sh (which then finds it installed), as on a real box.
	apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confnew \
		postfix sudo cron rsyslog locales file curl virtualenv python3-pip duplicity rsync \
		python3-dnspython python3-dkim swaks sqlite3 openssl >/var/log/miab-livebox-base.log 2>&1 ||
		{ tail -40 /var/log/miab-livebox-base.log; exit 1; }
	# start.sh runs `locale-gen en_US.UTF-8`; Debian's locale-gen ignores its argument and
	# builds what /etc/locale.gen lists.
	sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen
	locale-gen >/dev/null
	locale -a | grep -q en_US.utf8
}

cmd_conf() {
	# /etc/mailinabox.conf as setup/questions.sh + start.sh write it for this box.
	cat >/etc/mailinabox.conf <<-EOF
	STORAGE_USER=user-data
	STORAGE_ROOT=/home/user-data
	PRIMARY_HOSTNAME=$(hostname -f)
	PUBLIC_IP=127.0.0.1
	PUBLIC_IPV6=
	PRIVATE_IP=127.0.0.1
	PRIVATE_IPV6=
	MTA_STS_MODE=enforce
	EOF
	# shellcheck disable=SC1091
	source /etc/mailinabox.conf
	# As setup/start.sh does.
	id -u "$STORAGE_USER" >/dev/null 2>&1 || useradd -m "$STORAGE_USER"
	mkdir -p "$STORAGE_ROOT"
	local f=$STORAGE_ROOT
	while [[ $f != / ]]; do chmod a+rx "$f"; f=$(dirname "$f"); done
	if [ ! -f "$STORAGE_ROOT/mailinabox.version" ]; then
		(cd "$MIAB" && setup/migrate.py --current >"$STORAGE_ROOT/mailinabox.version")
		chown "$STORAGE_USER:$STORAGE_USER" "$STORAGE_ROOT/mailinabox.version"
	fi
	cat >/usr/local/bin/mailinabox <<-EOF
	#!/bin/bash
	cd $MIAB
	source setup/start.sh
	EOF
	chmod +x /usr/local/bin/mailinabox
}

cmd_miab() {
	miab_env
	cd "$MIAB"
	local s t0
	for s in "$@"; do
		t0=$(date +%s)
		# miab-2.4/NAME: our translation of MIAB's setup/NAME to Dovecot 2.4 (see there).
		local src=setup/$s
		case $s in miab-2.4/*) src=$HERE/$s ;; esac
		if [ "$(basename "$s")" = spamassassin.sh ]; then
			# Debian 12's spamassassin 4.0 has no /etc/default/spamassassin and MIAB's
			# editconf.py refuses a missing file.
			touch /etc/default/spamassassin
		fi
		# start.sh sources each script in one shell; a shell per script is the same
		# (each sources functions.sh and the conf itself) and tells which one failed.
		# stderr (openssl's progress dots, apt's notes) goes to a log shown on failure.
		local log=/var/log/miab-livebox-setup-$(basename "$s").err
		bash -c "source setup/functions.sh; source /etc/mailinabox.conf; source $src" </dev/null \
			2>"$log" || { tail -40 "$log"; echo "MIAB $src failed"; exit 1; }
		echo "   $src: $(( $(date +%s) - t0 ))s"
	done
}

# The configuration step of setup/zpush.sh (Z-Push itself is downloaded from the network,
# which the box has none of): its IMAP backend's config.php, from MIAB's own file.
cmd_zpush() {
	miab_env
	# shellcheck source=/dev/null
	source /etc/mailinabox.conf
	mkdir -p /usr/local/lib/z-push/backend/imap
	rm -f /usr/local/lib/z-push/backend/imap/config.php
	cp "$MIAB/conf/zpush/backend_imap.php" /usr/local/lib/z-push/backend/imap/config.php
	sed -i "s%STORAGE_ROOT%$STORAGE_ROOT%" /usr/local/lib/z-push/backend/imap/config.php
	grep -n IMAP_SMTP_METHOD /usr/local/lib/z-push/backend/imap/config.php
}

# MIAB's next version, as far as this test needs one: its mail-postfix.sh changes a value of
# its own (message_size_limit) and one of the lists the sidecars edit (a new recipient
# restriction).
cmd_next_version() {
	miab_env
	sed -i -e 's/message_size_limit=134217728/message_size_limit=157286400/' \
		-e 's/reject_unlisted_recipient,check_policy_service inet:127.0.0.1:10023/reject_unlisted_recipient,reject_non_fqdn_recipient,check_policy_service inet:127.0.0.1:10023/' \
		"$MIAB/setup/mail-postfix.sh"
	grep -c 'message_size_limit=157286400' "$MIAB/setup/mail-postfix.sh"
	grep -c 'reject_non_fqdn_recipient,check_policy_service' "$MIAB/setup/mail-postfix.sh"
}

cmd_venv() {
	miab_env
	# setup/management.sh's venv, its packages from the host's wheelhouse (no network here).
	if [ ! -d "$VENV" ]; then
		mkdir -p "$(dirname "$VENV")"
		DEB_PYTHON_INSTALL_LAYOUT=deb virtualenv -ppython3 "$VENV" >/dev/null
	fi
	local reqs
	reqs=$(sed -e 's/#.*//' "$HERE/wheels.list" | grep -v '^\s*$')
	# shellcheck disable=SC2086
	"$VENV/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$1" $reqs
	# duplicity as MIAB has it (the duplicity team's release, not Debian 12's 0.8.22, see
	# lib.sh fetch_wheels): in its own venv, /usr/bin/duplicity (which backup.py runs)
	# diverted to it.
	if [ ! -x /opt/duplicity/bin/duplicity ]; then
		virtualenv -q -ppython3 /opt/duplicity >/dev/null
		/opt/duplicity/bin/pip install -q --disable-pip-version-check --no-index --no-deps "$2"/*.whl
	fi
	if [ "$(readlink /usr/bin/duplicity)" != /opt/duplicity/bin/duplicity ]; then
		dpkg-divert --local --rename --divert /usr/bin/duplicity.debian --add /usr/bin/duplicity >/dev/null
		ln -sf /opt/duplicity/bin/duplicity /usr/bin/duplicity
	fi
	duplicity --version
	# shellcheck disable=SC1091
	source /etc/mailinabox.conf
	mkdir -p "$STORAGE_ROOT/backup"
	if [ ! -f "$STORAGE_ROOT/backup/secret_key.txt" ]; then
		(umask 077; openssl rand -base64 2048 >"$STORAGE_ROOT/backup/secret_key.txt")
	fi
	# The nightly backup's target, in MIAB's backup config format (custom.yaml):
	# "local" is file://STORAGE_ROOT/backup/encrypted.
	printf 'min_age_in_days: 3\ntarget: local\n' >"$STORAGE_ROOT/backup/custom.yaml"
	# backup.py stops and starts php8.0-fpm first (MIAB's web part, not in this box, and
	# a failed stop aborts the backup): a stand-in unit that does nothing.
	if [ ! -e /lib/systemd/system/php8.0-fpm.service ] && [ ! -e /etc/systemd/system/php8.0-fpm.service ]; then
		cat >/etc/systemd/system/php8.0-fpm.service <<-EOF
		[Unit]
		Description=Stand-in for MIAB's PHP-FPM (this box has no web part)
		[Service]
		Type=oneshot
		RemainAfterExit=yes
		ExecStart=/bin/true
		[Install]
		WantedBy=multi-user.target
		EOF
		systemctl daemon-reload
		systemctl enable --now php8.0-fpm.service >/dev/null 2>&1
	fi
}

cmd_dns() {
	systemctl stop miab-livebox-dns.service >/dev/null 2>&1 || true
	systemctl reset-failed miab-livebox-dns.service >/dev/null 2>&1 || true
	systemd-run --quiet --unit=miab-livebox-dns --property=Restart=always \
		/usr/bin/python3 "$HERE/dns-server.py"
	local i
	for i in $(seq 1 50); do
		if python3 -c 'import dns.resolver,sys; sys.exit(0 if dns.resolver.resolve("'"$(hostname -f)"'","MX") else 1)' 2>/dev/null; then
			return 0
		fi
		sleep 0.2
	done
	journalctl -u miab-livebox-dns --no-pager | tail -20
	return 1
}

cmd_mail() {
	miab_env
	cd "$MIAB"
	PYTHONPATH=$MIAB/management "$VENV/bin/python" "$HERE/miab-mail.py" "$@"
}

c=$1; shift
"cmd_$c" "$@"
