#!/usr/bin/env bash
# Builds unpoll and runs the demo: a sample legacy API, unpoll in front of it, a live page.
# Extra arguments go to `unpoll demo` (see --help): e.g. --listen 0.0.0.0:8080
set -euo pipefail
# Run from where it was called, so that file arguments (--tls-cert) are relative to there.
root="$(cd "$(dirname "$0")/.." && pwd)"
# Only what building needs (cmake): the test suite's tools are ./scripts/deps.sh's business.
(cd "$root" && ./scripts/build-deps.sh)
exec cargo run --manifest-path "$root/Cargo.toml" --locked --release -- demo "$@"
