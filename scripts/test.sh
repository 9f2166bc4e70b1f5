#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the multi-process integration tests.
# Usage: ./scripts/test.sh            (from anywhere in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build the binaries the integration tests run"
cargo build --workspace --bins
echo "== cargo test"
cargo test --workspace
