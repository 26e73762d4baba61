#!/usr/bin/env bash
# Builds a small bootable Debian guest from Debian packages only, once per machine:
#   guest.raw   1 GiB sparse raw ext4 image: debootstrap minbase + systemd-sysv, with a unit that writes
#               VMTHUNDER-BOOT-OK to /dev/kmsg (the serial console) once multi-user.target is reached, then
#               powers off
#   vmlinuz     the kernel of the host's linux-image-amd64
#   initrd.img  a small initramfs (mkinitramfs, MODULES=list: virtio_pci virtio_blk ext4 and their deps)
# Idempotent: if the outputs exist and the stamp matches this script's hash and the kernel version, it does
# nothing but print the paths. Concurrent runs serialise on a lock file.
#
# Usage: scripts/build-guest.sh [--out DIR] [--force]
#   DIR defaults to $VMTHUNDER_GUEST_DIR, else /var/cache/vmthunder/guest.
# Prints on stdout, one per line: GUEST_RAW=..., GUEST_KERNEL=..., GUEST_INITRD=..., GUEST_CMDLINE=...
# Everything else goes to stderr.
set -euo pipefail

OUT="${VMTHUNDER_GUEST_DIR:-/var/cache/vmthunder/guest}"
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build-guest: unknown argument: $1" >&2; exit 2 ;;
  esac
done

# The kernel command line the guest is meant to boot with (test/helpers/vm.ts uses the same default).
CMDLINE='console=ttyS0 root=/dev/vda rw quiet panic=-1'
MARKER='VMTHUNDER-BOOT-OK'
IMAGE_SIZE=1G

log() { echo "build-guest: $*" >&2; }

print_paths() {
  echo "GUEST_RAW=$OUT/guest.raw"
  echo "GUEST_KERNEL=$OUT/vmlinuz"
  echo "GUEST_INITRD=$OUT/initrd.img"
  echo "GUEST_CMDLINE=$CMDLINE"
}

[ "$(id -u)" = 0 ] || { echo "build-guest: must run as root (debootstrap, mkfs with ownership)" >&2; exit 1; }

# Newest installed Debian kernel (not the host's running kernel, which may not be a Debian one).
KVER="$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n1 || true)"

ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -qq update >&2
  DEBIAN_FRONTEND=noninteractive apt-get -qq -y install --no-install-recommends "${missing[@]}" >&2
}

ensure_packages debootstrap e2fsprogs initramfs-tools zstd linux-image-amd64 qemu-system-x86 qemu-utils
[ -n "$KVER" ] || KVER="$(ls /boot/vmlinuz-* | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n1)"
[ -d "/lib/modules/$KVER" ] || { echo "build-guest: /lib/modules/$KVER missing" >&2; exit 1; }

STAMP="$( { sha256sum "$0" | cut -d' ' -f1; echo "$KVER"; } | sha256sum | cut -d' ' -f1)"

have_outputs() {
  [ -s "$OUT/guest.raw" ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -f "$OUT/stamp" ] &&
    [ "$(cat "$OUT/stamp")" = "$STAMP" ]
}

mkdir -p "$OUT"
if [ "$FORCE" = 0 ] && have_outputs; then print_paths; exit 0; fi

exec 9>"$OUT/.lock"
flock -w 900 9 || { echo "build-guest: timed out waiting for another build ($OUT/.lock)" >&2; exit 1; }
if [ "$FORCE" = 0 ] && have_outputs; then print_paths; exit 0; fi  # another run built it meanwhile

# Mirror and suite: the ones apt already uses (deb822 .sources first, then one-line .list files).
SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
MIRROR=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  MIRROR="$(awk -v s="$SUITE" '
    /^[[:space:]]*$/ { if (ok && uri != "") { print uri; exit } ok=0; uri=""; next }
    /^URIs:/ { uri=$2 }
    /^Suites:/ { for (i=2;i<=NF;i++) if ($i==s) ok=1 }
    END { if (ok && uri != "") print uri }' "$f" | head -n1)"
  [ -n "$MIRROR" ] && break
done
if [ -z "$MIRROR" ]; then
  MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v s="$SUITE" '$1=="deb" { u=$2; if (u ~ /^\[/) u=$3; for (i=2;i<=NF;i++) if ($i==s) { print u; exit } }' || true)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

WORK="$(mktemp -d "${OUT%/}/.build.XXXXXX")"
cleanup() {
  # debootstrap may leave proc/sys mounted in the target if it fails half-way.
  for m in proc sys dev/pts dev; do umount -l "$WORK/rootfs/$m" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

START=$(date +%s)
log "kernel $KVER, mirror $MIRROR ($SUITE), building in $WORK"

# 1. Root filesystem. Debootstrap's download cache lives beside the outputs so a rebuild (new script hash)
# does not fetch again.
mkdir -p "$OUT/debs"
log "debootstrap --variant=minbase (takes about a minute)"
debootstrap --variant=minbase --include=systemd-sysv --cache-dir="$OUT/debs" \
  "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -n 30 "$WORK/debootstrap.log" >&2; echo "build-guest: debootstrap failed" >&2; exit 1; }

R="$WORK/rootfs"
echo vmguest >"$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmguest\n' >"$R/etc/hosts"
printf '/dev/vda / ext4 rw,noatime 0 1\n' >"$R/etc/fstab"
: >"$R/etc/machine-id"   # empty: systemd makes a transient one at boot (no first-boot wizard)

cat >"$R/etc/systemd/system/vmthunder-boot-ok.service" <<EOF
[Unit]
Description=Report boot completion on the console and power off
After=multi-user.target
Wants=multi-user.target

[Service]
Type=oneshot
# Priority <2> (crit) so the line reaches the console despite 'quiet'.
ExecStart=/bin/sh -c 'echo "<2>$MARKER" > /dev/kmsg'
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/vmthunder-boot-ok.service \
  "$R/etc/systemd/system/multi-user.target.wants/vmthunder-boot-ok.service"
ln -sf /lib/systemd/system/multi-user.target "$R/etc/systemd/system/default.target"
# Nothing logs in, nothing needs the network or the clock: masking these shortens the boot under TCG and
# keeps the login prompt from racing with the marker.
for u in getty@.service serial-getty@.service getty.target console-getty.service \
  systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
  e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-networkd-wait-online.service \
  systemd-tmpfiles-clean.timer man-db.timer proc-sys-fs-binfmt_misc.automount; do
  ln -sf /dev/null "$R/etc/systemd/system/$u"
done
# A lighter image: apt lists, docs, man pages and locales are not needed to boot.
rm -rf "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* "$R"/usr/share/man/* \
  "$R"/usr/share/locale/* "$R"/usr/share/info/*

# 2. Kernel and initrd. mkinitramfs with its own config dir: only the listed modules (and their deps).
cp "/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
mkdir -p "$WORK/initramfs-conf/conf.d" "$WORK/initramfs-conf/scripts" "$WORK/initramfs-conf/hooks"
cat >"$WORK/initramfs-conf/initramfs.conf" <<'EOF'
MODULES=list
BUSYBOX=auto
KEYMAP=n
COMPRESS=zstd
DEVICE=
NFSROOT=auto
RUNSIZE=10%
FSTYPE=ext4
EOF
printf 'virtio_pci\nvirtio_blk\next4\n' >"$WORK/initramfs-conf/modules"
log "mkinitramfs $KVER (MODULES=list)"
mkinitramfs -d "$WORK/initramfs-conf" -o "$WORK/initrd.img" "$KVER" >"$WORK/mkinitramfs.log" 2>&1 || {
  tail -n 30 "$WORK/mkinitramfs.log" >&2; echo "build-guest: mkinitramfs failed" >&2; exit 1; }

# 3. The image: sparse raw ext4 filled from the tree (no loop device, no mount).
truncate -s "$IMAGE_SIZE" "$WORK/guest.raw"
mkfs.ext4 -q -F -L vmguest -d "$R" "$WORK/guest.raw" >&2

# Replace the outputs atomically-ish: the stamp goes last, so a half-replaced set is never trusted.
rm -f "$OUT/stamp"
mv -f "$WORK/guest.raw" "$OUT/guest.raw"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
echo "$STAMP" >"$OUT/stamp"
log "done in $(( $(date +%s) - START )) s: image $(du -h --apparent-size "$OUT/guest.raw" | cut -f1) apparent," \
  "$(du -h "$OUT/guest.raw" | cut -f1) allocated; initrd $(du -h "$OUT/initrd.img" | cut -f1)"
print_paths
