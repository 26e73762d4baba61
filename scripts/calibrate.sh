#!/usr/bin/env bash
# npm run calibrate: the daemons it measures run the packaged build (dist/), as bench:testbed's agents do, so
# the costs are those of the code the testbed runs (tsx compiling src/ costs seconds of CPU at every start).
# VMTHUNDER_DIST=0 measures src/ through tsx; VMT_SKIP_BUILD=1 uses the dist/ there is.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${VMTHUNDER_DIST:-1}" = 1 ]; then
  case " $* " in
    *" --from-testbed "*) ;; # fits from a results file: no daemon runs
    *) if [ "${VMT_SKIP_BUILD:-0}" != 1 ]; then echo "calibrate: building dist/ (npm run build)" >&2; npm run --silent build >&2; fi ;;
  esac
  export VMTHUNDER_DIST=1
else
  unset VMTHUNDER_DIST
fi
exec node --import tsx scripts/calibrate.ts "$@"
