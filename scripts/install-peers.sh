#!/usr/bin/env bash
# Installs the benchmark's peers from Debian's packages: nginx, HAProxy, Caddy.
# `npm run bench` reports a peer that is missing as skipped, pointing here.
# Needs root (or sudo). Does nothing when all three are already installed.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
for peer in nginx haproxy caddy; do
  have "$peer" || missing+=("$peer")
done

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-peers: run as root (or install sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  echo "install-peers: installing ${missing[*]}"
  $SUDO apt-get update
  # Debian's packages may start a system-wide service on install; the benchmark
  # runs its own instances on free loopback ports and does not use them.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

for peer in nginx haproxy caddy; do
  if have "$peer"; then
    case "$peer" in
      nginx) echo "install-peers: $( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | head -1)" ;;
      haproxy) echo "install-peers: $( (haproxy -v 2>/dev/null || /usr/sbin/haproxy -v) | head -1)" ;;
      caddy) echo "install-peers: caddy $(caddy version | head -1)" ;;
    esac
  else
    echo "install-peers: $peer still missing" >&2
    exit 1
  fi
done
