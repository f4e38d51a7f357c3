#!/usr/bin/env bash
# What `npm install sluice` gives a user with no C++ toolchain: pack the tarball, install it
# into an empty project with --ignore-scripts (so nothing compiles; dependencies come from
# the registry as usual) with a PATH that holds node and npm only, then import sluice,
# check that the native codec came from the shipped prebuild, and proxy one echo round trip.
#
#   bash scripts/pack-smoke.sh              (npm run test:pack) pack this checkout
#   bash scripts/pack-smoke.sh sluice.tgz   test that tarball (the release workflow's)
#
# Then the same install with the prebuild taken away: the TypeScript codec runs, one
# warning line says so, SLUICE_NATIVE=required fails with every attempt listed.
#
# Needs dist/ (built by npm pack's `prepare`) and prebuilds/<this platform>/ (made here by
# scripts/prebuild.sh when missing). Leaves nothing behind but the temp dir it removes.
# Last line: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

platform=$(node -p 'process.platform + "-" + process.arch')
given=${1:-}
if [ -n "$given" ]; then given=$(readlink -f "$given"); elif ! ls "prebuilds/$platform"/*.node >/dev/null 2>&1; then
  echo "pack-smoke: no prebuild for $platform yet; making it"
  bash scripts/prebuild.sh
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-pack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
check() { # check "what" command...: count, and print the outcome
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok - $what"; else failed=$((failed + 1)); echo "not ok - $what"; fi
}

if [ -n "$given" ]; then
  echo "=== $given"
  cp "$given" "$tmp/" && tgz=$(basename "$given")
else
  echo "=== npm pack"
  tgz=$(npm pack --silent --pack-destination "$tmp" 2>/dev/null | tail -1)
fi
tar tzf "$tmp/$tgz" | sed 's|^package/||' | sort >"$tmp/files.txt"
echo "$tgz: $(wc -l <"$tmp/files.txt") files, $(du -k "$tmp/$tgz" | cut -f1) KiB"
grep -E '^prebuilds/' "$tmp/files.txt" | sed 's/^/  /'
has() { grep -qxF "$1" "$tmp/files.txt"; }
has_none() { ! grep -qE "$1" "$tmp/files.txt"; }
check "tarball has dist/index.js and its types" eval 'has dist/index.js && has dist/index.d.ts'
check "tarball has the $platform prebuild" eval "grep -qE '^prebuilds/$platform/.*\.node\$' '$tmp/files.txt'"
check "tarball has binding.gyp and native sources (build from source stays possible)" eval 'has binding.gyp && has native/addon.cc && has native/frame.h'
check "tarball has no tests, bench, build/ or fuzz corpus" has_none '^(test|bench|build|build-asan|src|scripts)/|^native/fuzz/|^\.'

# A bin dir with node and npm only: no gcc, g++, cc, make or python can be found.
bin=$tmp/bin
mkdir -p "$bin"
ln -s "$(command -v node)" "$bin/node"
ln -s "$(readlink -f "$(command -v npm)")" "$bin/npm"
nocc() { env -i HOME="$HOME" PATH="$bin" TMPDIR="${TMPDIR:-/tmp}" npm_config_cache="$(npm config get cache 2>/dev/null)" "$@"; }
check "no compiler, make or python on the sandbox PATH" nocc node -e "
  const fs = require('fs'), path = require('path');
  const found = ['gcc', 'g++', 'cc', 'c++', 'clang', 'make', 'python3', 'python']
    .filter((t) => process.env.PATH.split(':').some((d) => fs.existsSync(path.join(d, t))));
  if (found.length) { console.error('found on PATH:', found.join(' ')); process.exit(1); }"

echo "=== npm install --ignore-scripts ./$tgz (PATH=$bin)"
app=$tmp/app
mkdir -p "$app"
echo '{ "name": "sluice-pack-smoke", "version": "1.0.0", "private": true, "type": "module" }' >"$app/package.json"
check "npm install --ignore-scripts of the tarball" \
  nocc /bin/sh -c "cd '$app' && '$bin/npm' install --ignore-scripts --no-audit --no-fund --loglevel=error '$tmp/$tgz'"
check "no build/ in the installed package (nothing compiled)" test ! -e "$app/node_modules/sluice/build"

cp scripts/smoke-echo.mjs "$app/smoke.mjs"
echo "=== node --experimental-websocket smoke.mjs (PATH=$bin)"
smoke() {
  nocc /bin/sh -c "cd '$app' && node --no-warnings --experimental-websocket smoke.mjs" >"$tmp/smoke.out" 2>&1
  local rc=$?
  sed 's/^/  | /' "$tmp/smoke.out"
  [ $rc = 0 ] && grep -q "^native: true (node_modules/sluice/prebuilds/$platform/" "$tmp/smoke.out"
}
check "import sluice: native === true from the package's prebuilds/, echo round trip through createProxy" smoke
check "SLUICE_NATIVE=required loads too (the prebuild satisfies it)" \
  nocc /bin/sh -c "cd '$app' && SLUICE_NATIVE=required node -e \"import('sluice').then((m) => { if (!m.native) process.exit(1) })\""

# No binary fits: what a user on a platform without a prebuild (and no compiler) gets.
echo "=== the same install with its prebuilds/ moved away"
mv "$app/node_modules/sluice/prebuilds" "$tmp/prebuilds.away"
import_sluice() { # import_sluice ENV... : import sluice in the sandbox, print native=..., keep stderr
  nocc /usr/bin/env "$@" /bin/sh -c "cd '$app' && node -e \"import('sluice').then((m) => console.log('native=' + m.native))\""
}
soft=0; import_sluice >"$tmp/soft.out" 2>"$tmp/soft.err" || soft=$?
hard=0; import_sluice SLUICE_NATIVE=required >"$tmp/hard.out" 2>"$tmp/hard.err" || hard=$?
echo "  without SLUICE_NATIVE (exit $soft):"; sed 's/^/  | /' "$tmp/soft.out" "$tmp/soft.err"
echo "  SLUICE_NATIVE=required (exit $hard):"; grep -E '^SluiceError|^  - |^What to do' "$tmp/hard.err" | sed 's/^/  | /'
fallback_runs() { [ "$soft" = 0 ] && grep -qx 'native=false' "$tmp/soft.out"; }
one_warning() { [ "$(grep -c 'SLUICE_NATIVE_FALLBACK.*native codec not loaded' "$tmp/soft.err")" = 1 ]; }
required_fails() {
  [ "$hard" != 0 ] && grep -q 'SLUICE_ERR_NATIVE_UNAVAILABLE' "$tmp/hard.err" &&
    grep -q '(prebuild' "$tmp/hard.err" && grep -q '(local build)' "$tmp/hard.err" && grep -q '^What to do' "$tmp/hard.err"
}
# The package's install step (node-gyp-build: compile when no prebuild loads) must not
# fail the install when it cannot compile either; npm needs a shell to run it.
ln -s /bin/sh "$bin/sh"
rebuild=0
nocc /bin/sh -c "cd '$app' && npm rebuild sluice --foreground-scripts" >"$tmp/rebuild.log" 2>&1 || rebuild=$?
echo "  npm rebuild sluice, no prebuild, no compiler (exit $rebuild):"
{ grep -m1 'gyp ERR! not ok' "$tmp/rebuild.log"; grep '^sluice:' "$tmp/rebuild.log"; } | sed 's/^/  | /'
install_step_survives() { [ "$rebuild" = 0 ] && grep -q '^sluice: no prebuild fits' "$tmp/rebuild.log"; }
check "no binary, no compiler: the install step says so and does not fail the install" install_step_survives
check "no binary: native === false, the TypeScript codec runs" fallback_runs
check "no binary: exactly one warning line says so" one_warning
check "no binary + SLUICE_NATIVE=required: one error listing the prebuild and local-build attempts, and what to do" required_fails
mv "$tmp/prebuilds.away" "$app/node_modules/sluice/prebuilds"

echo
echo "${passed} passed, ${failed} failed"
[ "$failed" = 0 ]
