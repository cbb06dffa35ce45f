#!/usr/bin/env bash
# Runs the test suite: installs what is missing first (scripts/setup.sh is idempotent), the
# Python package included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --python
# The Milvus backend's feature is on: its store suite runs against milvus-lite.
cargo test --release --workspace --features bcl/milvus
# The Python package's tests (built into .venv by setup) and the scripts' (scripts/tests).
.venv/bin/python -m pytest -q crates/bcl-py/tests scripts/tests
# The Python package as a wheel, installed with pip into a fresh venv with its torch.
./scripts/test-wheel.sh
