#!/usr/bin/env bash
# Runs tap; when test files fail, runs exactly those files once more and says so.
#
# Why: a known intermittent fault (README "Known issues": a freshly upgraded client was,
# rarely, dropped by uWS 20.30's res.cork()) made end-to-end files fail about once in
# several full runs on these 2-core machines. Upgrades now avoid that path (the cork
# anchor); the retry stays until long runs show no FLAKY line. Every retry is printed as
# FLAKY with the file, so it is never silent. A file that fails twice fails the run.
# Output: tap's, then "tap-retry: <passed> <failed>" for scripts/test.sh to add up.
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
if [ "$status" -ne 0 ]; then
  files=$(grep -E '^not ok [0-9]+ - test/' "$log" | sed -E 's/^not ok [0-9]+ - (test\/[^ ]+).*/\1/' | sort -u)
  if [ -n "$files" ]; then
    echo
    echo "tap-retry: retrying once: $(echo $files)"
    # shellcheck disable=SC2086
    npx tap $files 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    r=$(summary "$log")
    rp=$(num pass "$r"); rf=$(num fail "$r")
    if [ "$status" -eq 0 ]; then
      echo "FLAKY: failed, then passed on retry: $(echo $files)"
      failed=0
      passed=$((passed + ${rp:-0}))
    else
      failed=${rf:-1}
    fi
  fi
fi
echo "tap-retry: ${passed} ${failed}"
exit "$status"
