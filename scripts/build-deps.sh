#!/usr/bin/env bash
# Installs what building unpoll needs beyond Rust, when it is missing: cmake (pingora builds
# zlib-ng with it), from Debian's packages. Nothing else: the demo needs no more
# (./scripts/demo.sh); ./scripts/deps.sh adds what the tests need.
set -euo pipefail
if ! command -v cmake >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing cmake..." >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >/dev/null
fi
