#!/usr/bin/env bash
# Builds the ASan/UBSan addon and runs checks against it through SLUICE_NATIVE_PATH:
# native/smoke.mjs, the codec tests (test/codec*.test.ts), and the native engine end to
# end (conformance, flood, proxy, hardening, engine-accept: every connection of those is
# accepted, handshaken and proxied by the sanitized engine), and the tunnel's native link
# (tunnel-interop in this process; tunnel: gateway and agent processes, which inherit the
# sanitized addon through the environment).
# Exits non-zero on a failing check or on any sanitizer report.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
addon="$(bash scripts/build-asan.sh | tail -1)" || { echo "test-asan: build failed" >&2; exit 1; }

log="$root/build-asan/test-asan.log"
: >"$log"
export SLUICE_NATIVE_PATH="$addon"
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
# Node itself leaks at exit; V8 installs its own SEGV handler.
export ASAN_OPTIONS="detect_leaks=0:handle_segv=0:allow_user_segv_handler=1:abort_on_error=0:exitcode=86"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87"

status=0
echo "== native smoke (ASan)"
node native/smoke.mjs 2>&1 | tee -a "$log" || status=1

# codec-dispatch is left out: it checks which implementation the loader picks, in child
# processes (slow under ASan, and the same native code as the codec files run).
tests=()
for f in test/codec*.test.ts; do [ "$f" = test/codec-dispatch.test.ts ] || tests+=("$f"); done
tests+=(test/conformance.test.ts test/flood.test.ts test/proxy.test.ts test/hardening.test.ts)
for f in test/engine-accept.test.ts test/envelope-route.test.ts test/engine-messages.test.ts test/proxy-tls.test.ts test/engine-tls.test.ts test/engine-deflate.test.ts test/tunnel-link.test.ts test/tunnel-interop.test.ts test/tunnel.test.ts; do [ -e "$f" ] && tests+=("$f"); done
if [ -e "${tests[0]}" ]; then
  echo "== tap ${tests[*]} (ASan)"
  npx tap --reporter=terse "${tests[@]}" 2>&1 | tee -a "$log" || status=1
fi

if grep -qE 'ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer' "$log"; then
  echo "test-asan: sanitizer report (see $log)" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "test-asan: ok"
exit "$status"
