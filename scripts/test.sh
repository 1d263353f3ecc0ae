#!/usr/bin/env bash
# The whole test suite: formatting, lints, dependency licences and bans, unit and integration
# tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --all-features --locked -- -D warnings
cargo deny --log-level error check licenses bans
cargo test --all-features --locked
