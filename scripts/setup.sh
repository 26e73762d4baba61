#!/usr/bin/env bash
# Installs what vmthunderd's demo and tests need, idempotently: Debian tools (once), then node modules
# (npm ci when package-lock.json changed since the last install).
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd (systemd-analyze, systemd-sysusers), prometheus (promtool), libvirt-clients + libxml2-utils
# (virt-xml-validate): the operator tests of packaging/, src/metrics/ and examples/.
DEBS=(qemu-utils libnbd-bin nbdkit qemu-system-x86 fio iproute2 python3-libnbd systemd prometheus libvirt-clients libxml2-utils)
missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

stamp=node_modules/.vmthunder-lock-sha
# The lock file and the patches applied to dependencies (npm ci runs 'prepare': patch-package).
want=$(cat package-lock.json patches/*.patch | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
  echo "$want" > "$stamp"
fi
