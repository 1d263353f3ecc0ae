#!/usr/bin/env bash
# The whole test suite: formatting, lints, dependency licences and bans, unit and integration
# tests, and the JavaScript client's tests against the binary those built (its npm
# dev-dependencies installed from the lock file).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --all-features --locked -- -D warnings
cargo deny --log-level error check licenses bans
cargo test --all-features --locked
# The pingora-http that unpoll patches in (vendor/pingora-http/UNPOLL.md): its own tests.
cargo test --manifest-path vendor/pingora-http/Cargo.toml --locked --target-dir target/vendor
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && UNPOLL_BIN="$PWD/../../target/debug/unpoll" npm test)
