#!/usr/bin/env bash
# The test command: installs what the tests need, then checks formatting and lints
# and runs every test (real PostgreSQL 15, real FUSE mounts, a real S3 server).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh test
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The library without the S3 backend, as the fuzz targets in fuzz/ build it.
cargo clippy --no-default-features --lib --locked -- -D warnings
cargo test --locked --no-fail-fast
