#!/usr/bin/env bash
# NBD server benchmark: our server vs `nbdkit file`, same clients, same run. Options: see scripts/bench-nbd.ts.
#   bash scripts/bench-nbd.sh [--json] [--runtime-s 5] [--reps 1] [--export-module M.ts --module-arg X]
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nbdkit nbdcopy fio; do
  command -v "$tool" >/dev/null || { echo "bench-nbd: $tool is missing (apt-get install -y nbdkit libnbd-bin fio)" >&2; exit 1; }
done
exec node --import tsx scripts/bench-nbd.ts "$@"
