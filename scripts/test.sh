#!/usr/bin/env bash
# Everything CI runs, in the order a developer wants failures: formatting, lints, then the
# whole test suite (unit tests, and integration tests that start the real binary on free
# ports and talk to it over real WebSockets).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then rerun" >&2
    exit 1
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
