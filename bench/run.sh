#!/usr/bin/env bash
# Training throughput of the default model: bcl (tch) against the identical PyTorch step,
# in the same run, on the same threads. Prints both JSON lines and the ratio.
# Usage: bench/run.sh [--device cpu|cuda] [--steps N] [--batch N] [--embed]
# (--embed: the embedding pass of evaluation, against PyTorch's torch.inference_mode() loop)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cpu; STEPS=40; BATCH=128; EMBED=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2;;
    --steps) STEPS=$2; shift 2;;
    --batch) BATCH=$2; shift 2;;
    --embed) EMBED=--embed; shift;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
cargo build --release --quiet -p bcl-cli
# Alternate the two implementations three times each so drift in machine load hits both.
for i in 1 2 3; do
  ./target/release/bcl bench --device "$DEVICE" --steps "$STEPS" --batch "$BATCH" $EMBED
  .venv/bin/python bench/torch_reference.py --device "$DEVICE" --steps "$STEPS" --batch "$BATCH" $EMBED
done | tee /dev/stderr | .venv/bin/python -c '
import json, sys, statistics
rows = [json.loads(l) for l in sys.stdin if l.strip()]
b = statistics.median(r["images_per_s"] for r in rows if r["impl"].startswith("bcl"))
p = statistics.median(r["images_per_s"] for r in rows if r["impl"].startswith("pytorch"))
print(f"median images/s: bcl {b:.0f}, pytorch {p:.0f}, ratio bcl/pytorch {b/p:.3f}")
'
