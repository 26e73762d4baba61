#!/usr/bin/env bash
# The main job: a demo cluster on this machine (see scripts/demo.ts). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node --import tsx scripts/demo.ts "$@"
