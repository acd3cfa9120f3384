#!/bin/bash
# Builds the Debian 13 (trixie) root the second live box boots from (Postfix 3.10, Dovecot
# 2.4), on the host, once: debootstrap, then inside a chroot the packages MIAB's setup
# installs, Postfix preseeded as box-setup.sh's `base` does on bookworm, and MIAB's
# management venv (its wheels built by trixie's own Python 3.13).
#
#   trixie-root.sh DIR    builds DIR (through DIR.new) unless DIR/.built names this recipe
#
# The box runs over an overlayfs whose lower layer is DIR, so DIR itself is never changed
# by a box and one build serves every run on this machine.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
dest=$1
MIRROR=${MIAB_TRIXIE_MIRROR:-http://deb.debian.org/debian}
HOST=box.example.org

# What the box needs, as tests/live-box/packages.list for bookworm, in trixie's names:
# MIAB's system.sh prerequisites, ssl.sh, mail-postfix.sh, mail-dovecot.sh (+ the Lua passdb
# the sidecars use on 2.4), dkim.sh, spamassassin.sh (trixie has no dovecot-antispam), the
# harness's clients; munin-node and man-db (munin.sh's node side, the package's manual pages).
# systemd to boot as the box's PID 1.
PKGS="systemd systemd-sysv dbus iproute2 procps libpam-systemd
sudo cron rsyslog locales file curl virtualenv python3-pip ca-certificates
openssl ssl-cert
postfix postfix-sqlite postfix-pcre postgrey
dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-sqlite sqlite3 dovecot-sieve
dovecot-managesieved dovecot-auth-lua lua-socket
opendkim opendkim-tools opendmarc
spampd razor pyzor libmail-dkim-perl
python3-dnspython python3-dkim swaks munin-node man-db"
recipe=$(printf '%s\n%s\n%s\n' "$PKGS" "$(cat "$HERE/wheels.list")" "$(sha256sum <"$0")" | sha256sum | cut -c1-16)

if [ -f "$dest/.built" ] && [ "$(cat "$dest/.built")" = "$recipe" ]; then
	echo "trixie root $dest is current ($recipe)"
	exit 0
fi

new=$dest.new
umount_all() {
	local m
	for m in dev/pts dev proc sys; do umount -l "$new/$m" 2>/dev/null || true; done
}
trap umount_all EXIT
umount_all
rm -rf --one-file-system "$new"
mkdir -p "$new"

debootstrap --variant=minbase --include=ca-certificates trixie "$new" "$MIRROR" >"$new.log" 2>&1 ||
	{ tail -30 "$new.log"; exit 1; }

mount -t proc proc "$new/proc"
mount --rbind /sys "$new/sys"
mount --bind /dev "$new/dev"
mount --bind /dev/pts "$new/dev/pts"
cp /etc/resolv.conf "$new/etc/resolv.conf"
# No service starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
chmod 755 "$new/usr/sbin/policy-rc.d"
echo "$HOST" >"$new/etc/hostname"
echo "$HOST" >"$new/etc/mailname"

# shellcheck disable=SC2086
chroot "$new" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive \
	/bin/bash -euo pipefail -c '
	debconf-set-selections <<-EOF
	postfix postfix/main_mailer_type select Internet Site
	postfix postfix/mailname string '"$HOST"'
	postfix postfix/mynetworks string 127.0.0.1/32 [::1]/128
	EOF
	apt-get update -q
	apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confnew '"$(echo $PKGS)"'
	# The recommends MIAB gets on Ubuntu that its scripts use.
	apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confnew rsyslog cron
	apt-get clean
	sed -i "s/^# *\(en_US.UTF-8 UTF-8\)/\1/" /etc/locale.gen
	locale-gen >/dev/null
' >>"$new.log" 2>&1 || { tail -40 "$new.log"; exit 1; }

# MIAB's management venv, as box-setup.sh venv makes it on bookworm.
reqs=$(sed -e 's/#.*//' "$HERE/wheels.list" | grep -v '^\s*$' | sed -e 's/cryptography==.*/cryptography/' | tr '\n' ' ')
# The host's CA bundle and pip configuration for pip (its way to PyPI may pass through a
# proxy or a mirror of its own).
cp /etc/ssl/certs/ca-certificates.crt "$new/tmp/host-ca.crt"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$new/etc/pip.conf"
# shellcheck disable=SC2086
chroot "$new" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CERT=/tmp/host-ca.crt \
	${PIP_INDEX_URL:+PIP_INDEX_URL=$PIP_INDEX_URL} ${PIP_EXTRA_INDEX_URL:+PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL} /bin/bash -euo pipefail -c "
	virtualenv -q -p python3 /usr/local/lib/mailinabox/env
	/usr/local/lib/mailinabox/env/bin/pip install -q --disable-pip-version-check $reqs
" >>"$new.log" 2>&1 || { tail -40 "$new.log"; exit 1; }

rm -f "$new/usr/sbin/policy-rc.d" "$new/etc/resolv.conf" "$new/tmp/host-ca.crt" "$new/etc/pip.conf"
umount_all
trap - EXIT
echo "$recipe" >"$new/.built"
rm -rf --one-file-system "$dest"
mv "$new" "$dest"
echo "trixie root $dest built ($recipe): $(chroot "$dest" dpkg-query -W -f='${Package} ${Version}\n' dovecot-core postfix | tr '\n' ' ')"
