# shellcheck shell=bash
# Helpers for the live box: host downloads, booting systemd in its own namespaces over an
# overlayfs of /, running commands inside, rebooting and tearing it down. Sourced by `run`.

LB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LB_CACHE=${MIAB_LIVEBOX_CACHE:-/var/cache/miab-livebox}   # debs + wheels, kept between runs
LB_STATE_BASE=${MIAB_LIVEBOX_STATE:-/var/lib/miab-livebox} # one fresh directory per run
LB_HOSTNAME=box.example.org
# The box's root: an overlayfs over LB_LOWER, the host's / (Debian 12, the first box) or a
# Debian 13 root built by trixie-root.sh (the second box).
LB_LOWER=${LB_LOWER:-/}
# MIAB v75's sources (test input, never copied into the project): $MIAB_SRC, else the
# shared/ folder beside the checkout, else the workplace's /work/shared.
if [ -z "${MIAB_SRC:-}" ]; then
	MIAB_SRC=$(cd "$LB_DIR/../../.." && pwd)/shared/mailinabox-v75
	[ -f "$MIAB_SRC/setup/start.sh" ] || MIAB_SRC=/work/shared/mailinabox-v75
fi
LB_DUPLICITY_VERSION=3.2.1
LB_BOX_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LB_T0=$(date +%s)

lb_log() { printf '%s\n' "$*" >&2; }
lb_die() { lb_log "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------------------------------
# Steps: "== step: NAME", then "ok (Ns)" or "FAIL (Ns)"; the first failure ends the run.
step() {
	local name=$1; shift
	local t0 rc
	t0=$(date +%s)
	echo "== step: $name"
	set +e
	( set -e; "$@" )
	rc=$?
	set -e
	local dt=$(( $(date +%s) - t0 )) total=$(( $(date +%s) - LB_T0 ))
	if [ "$rc" = 0 ]; then
		echo "ok ($name, ${dt}s, total ${total}s)"
	else
		echo "FAIL ($name, exit $rc, ${dt}s, total ${total}s)"
		exit 1
	fi
}

# ---------------------------------------------------------------------------------------
# Host side: the packages and wheels the box installs, downloaded once into LB_CACHE.
lb_packages() { sed -e 's/#.*//' "$LB_DIR/packages.list" | tr -s ' \n' '  '; }

fetch_debs() {
	local dir=$LB_CACHE/debs
	mkdir -p "$dir/partial"
	# Our own archive directory: the host's /var/cache/apt/archives is emptied by
	# docker-clean's DPkg::Post-Invoke hook on some images, ours is not. --reinstall makes
	# apt fetch the named packages even when the host has them installed (the box then
	# purges and reinstalls postfix fresh, see box_prepare_packages).
	local opts=(-y -q --download-only --reinstall -o "Dir::Cache::archives=$dir")
	# shellcheck disable=SC2046
	if ! DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" $(lb_packages) >"$LB_CACHE/apt-download.log" 2>&1; then
		lb_log "apt-get download failed; running apt-get update and trying again"
		apt-get update -q >/dev/null
		# shellcheck disable=SC2046
		DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" $(lb_packages) >"$LB_CACHE/apt-download.log" 2>&1 ||
			{ tail -30 "$LB_CACHE/apt-download.log"; return 1; }
	fi
	echo "$(find "$dir" -maxdepth 1 -name '*.deb' | wc -l) debs in $dir"
}

fetch_wheels() {
	local dir=$LB_CACHE/wheels
	mkdir -p "$dir"
	# Built (sdists too) with the Debian python3 the box runs, so they install offline.
	local reqs
	reqs=$(sed -e 's/#.*//' "$LB_DIR/wheels.list" | grep -v '^\s*$')
	# shellcheck disable=SC2086
	/usr/bin/python3 -m pip wheel -q --disable-pip-version-check --wheel-dir "$dir" $reqs >"$LB_CACHE/pip.log" 2>&1 ||
		{ tail -30 "$LB_CACHE/pip.log"; return 1; }
	echo "$(find "$dir" -name '*.whl' | wc -l) wheels in $dir"
	# duplicity: MIAB installs it from ppa:duplicity-team/duplicity-release-git (system.sh).
	# Debian 12's 0.8.22 hands backup.py's --gpg-options "'--cipher-algo=AES256'" to gpg
	# with the quotes, and gpg then fails every backup; the duplicity team's own release
	# (3.x, which strips them) comes from PyPI instead: the wheel alone (its dozens of
	# cloud-backend dependencies are not needed for a file:// target) and fasteners.
	local dup=$LB_CACHE/duplicity
	mkdir -p "$dup"
	/usr/bin/python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
		--dest "$dup" "duplicity==$LB_DUPLICITY_VERSION" >>"$LB_CACHE/pip.log" 2>&1 &&
		/usr/bin/python3 -m pip wheel -q --disable-pip-version-check --wheel-dir "$dup" "fasteners>=0.19" >>"$LB_CACHE/pip.log" 2>&1 ||
		{ tail -30 "$LB_CACHE/pip.log"; return 1; }
	echo "duplicity: $(cd "$dup" && ls ./*.whl | tr '\n' ' ')"
}

# Debian 13's Dovecot 2.4 for an in-place upgrade of the Debian 12 box, and whatever it
# pulls in (libc6 2.41, OpenSSL 3.5, ...): resolved against the box's own dpkg status, from
# bookworm and trixie together, into LB_CACHE/trixie-upgrade, which the box reads through its
# bind mount of LB_CACHE (apt_upgrade_opts gives both sides the same view).
LB_UPGRADE_PKGS="dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-sqlite dovecot-sieve dovecot-managesieved dovecot-auth-lua lua-socket"
apt_upgrade_opts() {
	local d=$LB_CACHE/trixie-upgrade
	echo "-o Dir::Etc::sourcelist=$d/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$d/lists -o Dir::Cache::archives=$d/archives"
}
fetch_trixie_upgrade() {
	local d=$LB_CACHE/trixie-upgrade
	mkdir -p "$d/lists/partial" "$d/archives/partial"
	cat >"$d/sources.list" <<-EOF
	deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
	deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
	deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
	EOF
	# shellcheck disable=SC2046
	apt-get -q $(apt_upgrade_opts) update >"$d/update.log" 2>&1 || { tail -20 "$d/update.log"; return 1; }
	# shellcheck disable=SC2046,SC2086
	DEBIAN_FRONTEND=noninteractive apt-get -q -y $(apt_upgrade_opts) \
		-o "Dir::State::status=$LB_STATE/upper/var/lib/dpkg/status" \
		install --download-only -t trixie $LB_UPGRADE_PKGS >"$d/download.log" 2>&1 ||
		{ tail -30 "$d/download.log"; return 1; }
	grep -E 'upgraded|newly installed' "$d/download.log" || true
}

# ---------------------------------------------------------------------------------------
# The box: an overlayfs over / (upper dir in LB_STATE), systemd as PID 1 of new pid, mount,
# net, uts and ipc namespaces, private /tmp, /run and /dev.
LB_STATE=""
LB_UNSHARE_PID=""
LB_BOX_PID=""

# Steps run in subshells, so the box's state lives in files: LB_STATE is chosen once in the
# main shell (box_pick_state), the PIDs are in $LB_STATE/*.pid.
box_pick_state() {
	mkdir -p "$LB_STATE_BASE"
	LB_STATE=$(mktemp -d "$LB_STATE_BASE/run.XXXXXX")
}

box_pids() {
	LB_UNSHARE_PID=$(cat "$LB_STATE/unshare.pid" 2>/dev/null || true)
	LB_BOX_PID=$(cat "$LB_STATE/box.pid" 2>/dev/null || true)
}

box_new_state() {
	mkdir -p "$LB_STATE/upper" "$LB_STATE/work" "$LB_STATE/root"
	box_write_identity
	box_copy_in
}

# MIAB at /root/mailinabox (where its setup expects to run from) and this folder at
# /opt/miab-livebox, copied in so the box does not depend on the host's mounts.
box_copy_in() {
	local u=$LB_STATE/upper
	[ -f "$MIAB_SRC/setup/start.sh" ] || lb_die "no Mail-in-a-Box sources at $MIAB_SRC"
	install -d -m 700 "$u/root"
	cp -a "$MIAB_SRC" "$u/root/mailinabox"
	chmod -R u+w "$u/root/mailinabox"
	mkdir -p "$u/opt"
	cp -a "$LB_DIR" "$u/opt/miab-livebox"
}

# Files the box needs before its first boot, written straight into the upper dir.
box_write_identity() {
	local u=$LB_STATE/upper
	mkdir -p "$u/etc/systemd/system" "$u/etc/apt/apt.conf.d" "$u/usr/sbin" "$u/var/log/journal"
	echo "$LB_HOSTNAME" >"$u/etc/hostname"
	echo "$LB_HOSTNAME" >"$u/etc/mailname"
	cat >"$u/etc/hosts" <<-EOF
	127.0.0.1	localhost
	127.0.0.1	$LB_HOSTNAME box
	::1	localhost ip6-localhost ip6-loopback
	EOF
	rm -f "$u/etc/resolv.conf"
	echo "nameserver 127.0.0.1" >"$u/etc/resolv.conf"
	# A machine of its own: not the host's machine-id (the journal lives under it).
	tr -d '-' </proc/sys/kernel/random/uuid >"$u/etc/machine-id"
	# The box installs from our archive dir, and keeps the .debs there (the host may carry
	# docker-clean, which deletes them after every dpkg run, and a policy-rc.d that forbids
	# starting services): neutralised inside the box only, as whiteouts in the upper dir.
	echo "Dir::Cache::archives \"$LB_CACHE/debs\";" >"$u/etc/apt/apt.conf.d/00miab-livebox"
	for f in /etc/apt/apt.conf.d/docker-clean /usr/sbin/policy-rc.d; do
		[ -e "$f" ] && mknod "$u$f" c 0 0
	done
	# What has no business in the box: consoles, timers, host services, hardware, anything
	# that would write the host kernel's global settings (sysctl, binfmt, udev). cron is
	# masked so no cron.daily job runs at a random time: the harness runs MIAB's cron jobs.
	local m
	for m in getty@tty1.service console-getty.service serial-getty@.service getty.target \
		postgresql.service prometheus.service e2scrub_reap.service systemd-timesyncd.service systemd-pstore.service \
		apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
		fstrim.timer man-db.timer logrotate.timer systemd-tmpfiles-clean.timer \
		systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
		systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-hwdb-update.service \
		systemd-sysctl.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
		systemd-modules-load.service sys-kernel-debug.mount sys-kernel-tracing.mount \
		sys-kernel-config.mount sys-fs-fuse-connections.mount systemd-firstboot.service \
		systemd-networkd-wait-online.service systemd-journald-audit.socket cron.service \
		remote-fs.target; do
		ln -sf /dev/null "$u/etc/systemd/system/$m"
	done
}

# Boots systemd in the box; returns once it answers (not necessarily fully up).
box_boot() {
	local s=$LB_STATE
	[ -d "$s/upper" ] || lb_die "no box state"
	# The work dir must be empty for a new mount.
	rm -rf "$s/work" && mkdir -p "$s/work"
	: >"$s/console.log"
	# cgroups: on a unified (cgroup2) host the box gets a cgroup namespace rooted in a
	# cgroup of its own (delegated by the host's systemd when there is one), so the box's
	# systemd can never see, stop or kill a host service. On a v1/hybrid host without
	# systemd (where this was built) the box's systemd gets the host's hierarchy, as in
	# live-box.md's recipe; nothing else manages it there.
	local cg=() cgns=""
	if [ "$LB_LOWER" != / ] && [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] &&
		[ "$(readlink /proc/1/exe)" != /usr/lib/systemd/systemd ] && [ "$(readlink /proc/1/exe)" != /lib/systemd/systemd ]; then
		# A v1/hybrid host without systemd, and a box whose systemd (257, Debian 13) no
		# longer boots on cgroup v1: a cgroup2 hierarchy of the box's own (it has no
		# controllers there, all are bound to v1; systemd only tracks processes with it),
		# mounted once on the host outside any box, and a cgroup namespace rooted in it.
		local v2=/run/miab-livebox-cgroup2
		mkdir -p "$v2"
		[ "$(stat -fc %T "$v2")" = cgroup2fs ] || mount -t cgroup2 cgroup2 "$v2"
		cgns=--cgroup
		echo "$v2/miab-livebox-$(basename "$s")" >"$s/cgroup"
		cg=(/bin/bash -c 'mkdir -p "$0" && echo $$ >"$0/cgroup.procs" && exec "$@"' "$(cat "$s/cgroup")")
	elif [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
		cgns=--cgroup
		if [ "$(readlink /proc/1/exe)" = /usr/lib/systemd/systemd ] || [ "$(readlink /proc/1/exe)" = /lib/systemd/systemd ]; then
			cg=(systemd-run --quiet --scope --collect -p Delegate=yes "--unit=miab-livebox-$(basename "$s")-$(date +%s)")
		else
			echo "/sys/fs/cgroup/miab-livebox-$(basename "$s")" >"$s/cgroup"
			cg=(/bin/bash -c 'mkdir -p "$0" && echo $$ >"$0/cgroup.procs" && exec "$@"' "$(cat "$s/cgroup")")
		fi
	elif [ "$(readlink /proc/1/exe)" = /usr/lib/systemd/systemd ] || [ "$(readlink /proc/1/exe)" = /lib/systemd/systemd ]; then
		lb_die "the host runs systemd on cgroup v1: refusing to share its cgroup hierarchy with the box"
	fi
	setsid "${cg[@]}" unshare --pid --fork --mount --net --uts --ipc $cgns --propagation private \
		/bin/bash "$LB_DIR/box-init.sh" "$s" "$LB_HOSTNAME" "$LB_CACHE" "$cgns" "$LB_LOWER" >>"$s/console.log" 2>&1 </dev/null &
	LB_UNSHARE_PID=$!
	LB_BOX_PID=""
	echo "$LB_UNSHARE_PID" >"$s/unshare.pid"
	local i
	for i in $(seq 1 100); do
		LB_BOX_PID=$(cat "/proc/$LB_UNSHARE_PID/task/$LB_UNSHARE_PID/children" 2>/dev/null | awk '{print $1}')
		if [ -n "$LB_BOX_PID" ] && [ "$(readlink "/proc/$LB_BOX_PID/exe" 2>/dev/null)" = /usr/lib/systemd/systemd ]; then
			echo "$LB_BOX_PID" >"$s/box.pid"
			return 0
		fi
		kill -0 "$LB_UNSHARE_PID" 2>/dev/null || break
		sleep 0.2
	done
	cat "$s/console.log" >&2
	lb_die "systemd did not start in the box"
}

# Runs a command inside the box as root, with a clean environment.
box_exec() {
	# From the file every time: steps run in subshells, and a reboot gives the box a new PID.
	box_pids
	[ -n "$LB_BOX_PID" ] || lb_die "the box is not running"
	nsenter -t "$LB_BOX_PID" -a -- /usr/bin/env -i PATH="$LB_BOX_PATH" HOME=/root \
		LANG=C.UTF-8 TERM=dumb "$@"
}
# Same, with stdin from the caller (for here-documents): bash -s inside the box.
box_sh() { box_exec /bin/bash -euo pipefail -s "$@"; }

box_wait_running() {
	local state="" i
	for i in $(seq 1 120); do
		state=$(box_exec systemctl is-system-running 2>/dev/null || true)
		case $state in
		running | degraded) echo "box is $state"; return 0 ;;
		esac
		sleep 1
	done
	box_exec systemctl list-jobs --no-pager >&2 || true
	lb_die "box did not come up (state: $state)"
}

# A clean stop: systemctl poweroff, then wait for the namespace's init to exit.
box_stop() {
	box_pids
	[ -n "$LB_UNSHARE_PID" ] || return 0
	if kill -0 "$LB_UNSHARE_PID" 2>/dev/null; then
		box_exec systemctl poweroff --no-block >/dev/null 2>&1 || true
		local i
		for i in $(seq 1 180); do
			kill -0 "$LB_UNSHARE_PID" 2>/dev/null || break
			sleep 0.5
		done
		if kill -0 "$LB_UNSHARE_PID" 2>/dev/null; then
			lb_log "box did not power off in 90 s; killing its systemd"
			box_kill
			return 1
		fi
	fi
	rm -f "$LB_STATE/unshare.pid" "$LB_STATE/box.pid"
	LB_UNSHARE_PID="" LB_BOX_PID=""
}

box_kill() {
	[ -n "$LB_STATE" ] && box_pids
	if [ -n "$LB_BOX_PID" ]; then kill -KILL "$LB_BOX_PID" 2>/dev/null || true; fi
	if [ -n "$LB_UNSHARE_PID" ]; then
		local i
		for i in $(seq 1 50); do kill -0 "$LB_UNSHARE_PID" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$LB_UNSHARE_PID" 2>/dev/null || true
		for i in $(seq 1 50); do kill -0 "$LB_UNSHARE_PID" 2>/dev/null || break; sleep 0.2; done
	fi
	[ -n "$LB_STATE" ] && rm -f "$LB_STATE/unshare.pid" "$LB_STATE/box.pid"
	# The box's own cgroup (unified hosts without systemd), bottom-up.
	if [ -n "$LB_STATE" ] && [ -f "$LB_STATE/cgroup" ] && [ -d "$(cat "$LB_STATE/cgroup")" ]; then
		find "$(cat "$LB_STATE/cgroup")" -depth -type d -exec rmdir {} + 2>/dev/null || true
	fi
	LB_UNSHARE_PID="" LB_BOX_PID=""
}

box_reboot() {
	box_stop
	box_boot
	box_wait_running
}

# Ends the box and deletes its upper dir (MIAB_LIVEBOX_KEEP=1 keeps it for a look).
box_teardown() {
	box_kill
	if [ -n "$LB_STATE" ] && [ -d "$LB_STATE" ]; then
		if [ "${MIAB_LIVEBOX_KEEP:-0}" = 1 ]; then
			lb_log "kept the box's files in $LB_STATE"
		else
			rm -rf --one-file-system "$LB_STATE"
		fi
	fi
}
