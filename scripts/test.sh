#!/usr/bin/env bash
# Runs the test suite: installs what is missing first (scripts/setup.sh is idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --release --workspace
