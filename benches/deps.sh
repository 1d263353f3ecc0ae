#!/usr/bin/env bash
# What the comparison benchmarks need beyond the build: nginx with the nchan module, and wrk.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] && command -v wrk >/dev/null; then
  exit 0
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx libnginx-mod-nchan wrk >/dev/null
