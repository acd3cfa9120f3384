#!/bin/bash
# PID 1 of the box's new PID namespace (started by lib.sh's box_boot through unshare), as
# box-init.sh STATE HOSTNAME CACHE [CGNS [LOWER]]: mounts
# the box's root (overlayfs over LOWER, default the host's /, changes in STATE/upper), its own /proc, /dev,
# /tmp and /run, then becomes systemd. Never boot systemd without the private /tmp and /run:
# its tmpfiles cleanup would empty the host's.
set -euo pipefail
state=$1 hostname=$2 cache=$3 cgns=${4:-} lower=${5:-/}
root=$state/root
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$state/upper,workdir=$state/work" "$root"
mount -t proc proc "$root/proc"
# The host's downloads (debs, wheels), wherever they live, at the same path inside.
mkdir -p "$cache" "$root$cache"
mount --bind "$cache" "$root$cache"
mount --rbind /sys "$root/sys"
if [ "$cgns" = --cgroup ]; then
	# Our own cgroup namespace: a fresh cgroup2 mount shows only the box's subtree.
	umount -R "$root/sys/fs/cgroup" 2>/dev/null || umount -l "$root/sys/fs/cgroup" || true
	mount -t cgroup2 -o nsdelegate cgroup2 "$root/sys/fs/cgroup"
fi
mount -t tmpfs -o mode=755,size=16m,nosuid tmpfs "$root/dev"
for d in null zero full random urandom tty kmsg; do
	touch "$root/dev/$d"
	mount --bind "/dev/$d" "$root/dev/$d"
done
mkdir -p "$root/dev/pts" "$root/dev/shm" "$root/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=1777,nosuid,nodev,size=2g tmpfs "$root/tmp"
mount -t tmpfs -o mode=755,nosuid,nodev,size=512m tmpfs "$root/run"
hostname "$hostname"
ip link set lo up
cd "$root"
mkdir -p "$root/.oldroot"
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot 2>/dev/null || true
export container=miab-livebox
exec /lib/systemd/systemd --system --log-target=console --show-status=no
