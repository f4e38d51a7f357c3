#!/usr/bin/env bash
# Builds the benchmark load generator: one C++17 program; links OpenSSL (libssl-dev) for --tls.
# bench/run.js calls this when bench/loadgen/loadgen is missing or older than its sources.
set -euo pipefail
cd "$(dirname "$0")"
CXX="${CXX:-g++}"
"$CXX" -std=c++17 -O2 -Wall -Wextra -pthread -o loadgen.tmp loadgen.cc -lssl -lcrypto
mv loadgen.tmp loadgen
