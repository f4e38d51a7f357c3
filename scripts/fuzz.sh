#!/usr/bin/env bash
# Builds the libFuzzer targets of native/fuzz/ (clang, ASan + UBSan) and runs each one for
# a bounded time. Usage: scripts/fuzz.sh [seconds-per-target]   (default 20)
# Exits non-zero when a target crashes (the crashing input is saved as build-asan/fuzz/crash-*).
set -euo pipefail

seconds="${1:-20}"
root="$(cd "$(dirname "$0")/.." && pwd)"
# Under build-asan/ (git-ignored): these are sanitizer builds too.
out="$root/build-asan/fuzz"
cxx="${CLANGXX:-clang++}"
mkdir -p "$out"

if ! command -v "$cxx" >/dev/null; then
  echo "fuzz: $cxx not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi

targets=(frame_parser envelope utf8 frame_cursor http_head inflate_meter engine mux)
# The engine target links the whole engine: libuv, OpenSSL and zlib, from the system's
# headers (Debian: libuv1-dev, libssl-dev, zlib1g-dev) and libraries; the tunnel link's
# (mux) needs libuv. Without them both are
# skipped, loudly (as test.sh skips every target without clang); .ci/run installs them.
for h in uv.h:libuv1-dev openssl/ssl.h:libssl-dev zlib.h:zlib1g-dev; do
  if [ ! -f "/usr/include/${h%%:*}" ]; then
    echo "SKIPPED: the engine and mux fuzz targets: /usr/include/${h%%:*} not found (apt-get install ${h#*:})" >&2
    targets=("${targets[@]/engine}")
    targets=("${targets[@]/mux}")
  fi
done

flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -DSLUICE_NO_TARGET_CLONES -Wall -Wextra -I"$root/native")

declare -A sources=(
  [frame_parser]="native/frame.cc native/frame_run.cc native/mask.cc"
  [envelope]="native/envelope.cc"
  [utf8]="native/utf8.cc"
  [frame_cursor]="native/engine/frame_cursor.cc native/engine/utf8_stream.cc native/frame.cc native/frame_run.cc native/mask.cc native/utf8.cc"
  [http_head]="native/engine/http_head.cc"
  [inflate_meter]="native/engine/inflate_meter.cc native/engine/utf8_stream.cc native/utf8.cc"
  [engine]="native/engine/engine.cc native/engine/backlog.cc native/engine/handshake.cc native/engine/tls.cc
            native/engine/frame_cursor.cc native/engine/utf8_stream.cc native/engine/inflate_meter.cc
            native/engine/http_head.cc native/frame.cc native/frame_run.cc native/mask.cc native/utf8.cc native/envelope.cc"
  [mux]="native/tunnel/mux.cc native/tunnel/yamux_reader.cc native/engine/backlog.cc native/engine/frame_cursor.cc
         native/frame.cc native/frame_run.cc native/mask.cc native/utf8.cc"
)
# zlib: Node's headers (as the addon is built), the system's library (always installed).
# engine, mux: the system's headers (uv.h is not Node's: its libuv may be newer than the system's).
declare -A libs=([inflate_meter]="-l:libz.so.1" [engine]="-l:libuv.so.1 -l:libssl.so.3 -l:libcrypto.so.3 -l:libz.so.1"
                 [mux]="-l:libuv.so.1")
declare -A incs=([inflate_meter]="-I$(npm config get nodedir 2>/dev/null || echo /usr)/include/node")

# Seed corpus (small, committed); regenerate with: node native/fuzz/make-corpus.mjs
for d in frame_parser envelope utf8 http_head inflate_meter; do
  if [ ! -d "$root/native/fuzz/corpus/$d" ]; then
    node "$root/native/fuzz/make-corpus.mjs"
    break
  fi
done

# The engine's per-read path reads the same wire format: it starts from the parser's seeds.
# The engine and mux targets' seeds (native/fuzz/corpus/{engine,mux}/) are committed, not
# generated (python3 native/fuzz/make-{engine,mux}-seeds.py writes them).
declare -A corpus=([frame_cursor]=frame_parser)

status=0
# Built side by side (the engine target alone takes a while), then run one at a time.
declare -A builds=()
for target in "${targets[@]}"; do
  [ -n "$target" ] || continue
  srcs=()
  for s in ${sources[$target]}; do srcs+=("$root/$s"); done
  # shellcheck disable=SC2086 # word splitting of the extra flags is meant
  "$cxx" "${flags[@]}" ${incs[$target]:-} "$root/native/fuzz/${target}_fuzz.cc" "${srcs[@]}" ${libs[$target]:-} \
    -o "$out/$target" >"$out/build-$target.log" 2>&1 &
  builds[$target]=$!
done
for target in "${targets[@]}"; do
  [ -n "$target" ] || continue
  echo "== build $target"
  if ! wait "${builds[$target]}"; then
    echo "!! $target: build FAILED" >&2
    cat "$out/build-$target.log" >&2
    status=1
    continue
  fi
  cat "$out/build-$target.log"
  work="$out/corpus-$target"
  mkdir -p "$work"
  log="$out/$target.log"
  echo "== run $target for ${seconds}s"
  set +e
  ( cd "$out" && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      "./$target" -max_total_time="$seconds" -print_final_stats=1 -max_len=4096 \
      -artifact_prefix="$out/crash-$target-" "$work" "$root/native/fuzz/corpus/${corpus[$target]:-$target}" ) >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  rate=$(grep -o 'exec/s: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  cov=$(grep -o 'cov: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  if [ "$rc" -ne 0 ]; then
    echo "!! $target FAILED (exit $rc), log: $log" >&2
    grep -m 20 -E 'ERROR|check failed|runtime error|SUMMARY|Test unit written' "$log" >&2 || tail -20 "$log" >&2
    status=1
  else
    echo "   $target: ${execs:-?} executions (${rate:-?} exec/s), coverage ${cov:-?}"
  fi
done
exit "$status"
