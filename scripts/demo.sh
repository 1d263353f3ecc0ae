#!/usr/bin/env bash
# Builds unpoll and runs the demo: a sample legacy API, unpoll in front of it, a live page.
# Extra arguments go to `unpoll demo` (see --help): e.g. --listen 0.0.0.0:8080
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
exec cargo run --locked --release -- demo "$@"
