#!/usr/bin/env bash
# Builds the `bcl` binary exactly as scripts/setup.sh does (release, with the Milvus gallery
# backend), so that a benchmark script reuses the binary setup built instead of rebuilding it
# with other features and replacing it. Extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p bcl-cli --features milvus "$@"
