#!/usr/bin/env bash
# Installs what building unpoll needs beyond Rust: cmake (pingora builds zlib-ng with it).
set -euo pipefail
if command -v cmake >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing cmake (needed to build pingora)..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >/dev/null
