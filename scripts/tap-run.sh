#!/usr/bin/env bash
# Runs tap and prints "tap-run: <passed> <failed>" for scripts/test.sh to add up.
# (No retry: a failing file fails the run.)
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT

summary() { grep -E '^# \{ total: ' "$1" | tail -1; }
num() { sed -nE "s/.*$1: ([0-9]+).*/\1/p" <<<"$2"; }

npx tap "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
s=$(summary "$log")
passed=$(num pass "$s"); passed=${passed:-0}
failed=$(num fail "$s"); failed=${failed:-0}
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "tap-run: ${passed} ${failed}"
exit "$status"
