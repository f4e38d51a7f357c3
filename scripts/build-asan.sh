#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer into
# build-asan/sluice.node (g++ straight against Node's headers: offline, no node-gyp state
# shared with the release build). Load it with LD_PRELOAD of libasan (see test-asan.sh).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/build-asan"
cxx="${CXX:-g++}"
nodedir="${NODEDIR:-$(npm config get nodedir 2>/dev/null || true)}"
[ -n "$nodedir" ] && [ "$nodedir" != "undefined" ] || nodedir=/usr
nodeinc="$nodedir/include/node"
[ -f "$nodeinc/node_api.h" ] || nodeinc="$(dirname "$(command -v node)")/../include/node"
napiinc="$(cd "$root" && node -p "require('path').resolve(require('node-addon-api').include_dir)")"

mkdir -p "$out"
objs=()
for src in addon envelope frame frame_run mask pool utf8 engine/listener engine/backlog engine/binding engine/engine engine/handshake engine/http_head engine/frame_cursor engine/utf8_stream engine/tls engine/inflate_meter tunnel/binding tunnel/mux tunnel/yamux_reader; do
  "$cxx" -std=c++17 -O1 -g -fPIC -fno-omit-frame-pointer -fsanitize=address,undefined \
    -fno-sanitize=vptr -fvisibility=hidden -Wall -Wextra -Wpedantic -Wno-unused-parameter \
    -DNAPI_DISABLE_CPP_EXCEPTIONS -DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_DEPRECATED \
    -DSLUICE_NO_TARGET_CLONES -I"$nodeinc" -I"$napiinc" \
    -c "$root/native/$src.cc" -o "$out/${src//\//_}.o" &
  objs+=("$out/${src//\//_}.o")
  # Two at a time: the machine is shared.
  if (( ${#objs[@]} % 2 == 0 )); then wait; fi
done
wait
"$cxx" -shared -fsanitize=address,undefined -o "$out/sluice.node" "${objs[@]}"
echo "$out/sluice.node"
