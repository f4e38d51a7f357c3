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

flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -DSLUICE_NO_TARGET_CLONES -Wall -Wextra -I"$root/native")

declare -A sources=(
  [frame_parser]="native/frame.cc native/frame_run.cc native/mask.cc"
  [envelope]="native/envelope.cc"
  [utf8]="native/utf8.cc"
  [frame_cursor]="native/engine/frame_cursor.cc native/engine/utf8_stream.cc native/frame.cc native/frame_run.cc native/mask.cc native/utf8.cc"
  [http_head]="native/engine/http_head.cc"
  [inflate_meter]="native/engine/inflate_meter.cc native/engine/utf8_stream.cc native/utf8.cc"
)
# zlib: Node's headers (as the addon is built), the system's library (always installed).
declare -A libs=([inflate_meter]="-l:libz.so.1")
declare -A incs=([inflate_meter]="-I$(npm config get nodedir 2>/dev/null || echo /usr)/include/node")

# Seed corpus (small, committed); regenerate with: node native/fuzz/make-corpus.mjs
for d in frame_parser envelope utf8 http_head inflate_meter; do
  if [ ! -d "$root/native/fuzz/corpus/$d" ]; then
    node "$root/native/fuzz/make-corpus.mjs"
    break
  fi
done

# The engine's per-read path reads the same wire format: it starts from the parser's seeds.
declare -A corpus=([frame_cursor]=frame_parser)

status=0
for target in frame_parser envelope utf8 frame_cursor http_head inflate_meter; do
  srcs=()
  for s in ${sources[$target]}; do srcs+=("$root/$s"); done
  echo "== build $target"
  # shellcheck disable=SC2086 # word splitting of the extra flags is meant
  "$cxx" "${flags[@]}" ${incs[$target]:-} "$root/native/fuzz/${target}_fuzz.cc" "${srcs[@]}" ${libs[$target]:-} -o "$out/$target"
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
