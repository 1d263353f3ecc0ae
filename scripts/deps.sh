#!/usr/bin/env bash
# Installs what building and testing unpoll needs beyond Rust, from Debian's packages, when it is
# missing: cmake (pingora builds zlib-ng with it), chromium (the demo page's browser test) and
# systemd's systemd-analyze (the test that rates deploy/unpoll.service), redis-server (the
# cluster tests start their own, on a free port), Node.js and npm (the JavaScript client's
# tests); and, from crates.io,
# cargo-deny (the licence and ban checks of ./scripts/test.sh; built once, in about 90 s).
set -euo pipefail
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  echo "installing cargo-deny $CARGO_DENY_VERSION..." >&2
  # A debug build: a minute and a half to build instead of four, and the checks take seconds.
  cargo install --debug --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
[ -x "${UNPOLL_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing ${missing[*]}..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
