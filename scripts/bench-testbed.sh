#!/usr/bin/env bash
# The testbed benchmark of issue 6 (see scripts/bench-testbed.ts for what it measures).
#   npm run bench:testbed -- --hosts N --rate RATE [--origin-rate RATE] [--trace FILE] [--json] [--out DIR]
#     [--systems vmthunderd,nbdkit,http,bittorrent,vmthunderd-failure,vmthunderd-noprefetch] [--image trace|guest|FILE]
#     [--prefix P] [--timeout-s S] [--vmt-config FILE] [--vmt-create at-go|before] [--warm-up] [--perf]
# Installs the Debian packages it needs (idempotent), and always tears the testbed down, even on failure or
# Ctrl-C (the TypeScript side does it too; this trap is the backstop).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-testbed: must run as root (network namespaces)" >&2; exit 1; }

PREFIX=vmtb
PKGS="nbdkit busybox curl opentracker mktorrent aria2 iproute2 qemu-utils"
prev=""
for a in "$@"; do
  [ "$prev" = "--prefix" ] && PREFIX="$a"
  case "$a" in --prefix=*) PREFIX="${a#--prefix=}" ;; --perf) PKGS="$PKGS linux-perf" ;; esac
  prev="$a"
done
missing=()
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench-testbed: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -qq update >&2
  DEBIAN_FRONTEND=noninteractive apt-get -qq -y install --no-install-recommends "${missing[@]}" >&2
fi

# The agents run the packaged build (dist/, what `npm install -g` of the tarball runs), built here from the
# current tree: start-up and restart times (the churn runs) are those of the package, not of tsx compiling
# src/ at every start. VMTHUNDER_DIST=0 runs src/ through tsx instead; VMT_SKIP_BUILD=1 runs the dist/ there
# is (interleaved A/B runs of one build).
if [ "${VMTHUNDER_DIST:-1}" = 1 ]; then
  if [ "${VMT_SKIP_BUILD:-0}" != 1 ]; then
    echo "bench-testbed: building dist/ (npm run build)" >&2
    npm run --silent build >&2
  fi
  export VMTHUNDER_DIST=1
else
  unset VMTHUNDER_DIST
fi

trap 'bash scripts/testbed.sh down --prefix "$PREFIX" >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT TERM
node --import tsx scripts/bench-testbed.ts "$@"
