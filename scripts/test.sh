#!/usr/bin/env bash
# The test command (npm test, and .ci/run): set up, typecheck, then every test/**/*.test.ts with node:test.
# Extra arguments select test files: npm test -- test/unit/manifest-cache.test.ts
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== typecheck" >&2
npx tsc --noEmit -p .
if [ "$#" -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(find test -name '*.test.ts' -not -path '*/node_modules/*' | sort)
fi
echo "== ${#files[@]} test files" >&2
# Two files at a time on two cores; each test sets its own timeout, and the whole file is bounded too.
exec node --import tsx --test --test-concurrency=2 --test-timeout=900000 --test-reporter=spec "${files[@]}"
