#!/usr/bin/env bash
# Training throughput of the default model: bcl (tch) against the identical PyTorch step,
# in the same run, on the same threads. Prints both JSON lines and the ratio.
# Usage: bench/run.sh [--device cpu|cuda] [--steps N] [--batch N] [--embed] [--autocast bf16]
#                     [--channels-last]
# (--embed: the embedding pass of evaluation, against PyTorch's torch.inference_mode() loop;
# --autocast/--channels-last: both sides under the same execution settings)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cpu; STEPS=40; BATCH=128; EMBED=; EXEC=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2;;
    --steps) STEPS=$2; shift 2;;
    --batch) BATCH=$2; shift 2;;
    --embed) EMBED=--embed; shift;;
    --autocast) EXEC+=(--autocast "$2"); shift 2;;
    --channels-last) EXEC+=(--channels-last); shift;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
./scripts/build-cli.sh
# Alternate the implementations three times each so drift in machine load hits all. PyTorch runs
# twice: as installed, and with the glibc malloc settings the bcl binary sets for itself
# (bcl-cli's keep_freed_memory), so the table can tell the engine from the allocator.
MALLOC=(env MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824)
for i in 1 2 3; do
  ./target/release/bcl bench --device "$DEVICE" --steps "$STEPS" --batch "$BATCH" $EMBED "${EXEC[@]}"
  .venv/bin/python bench/torch_reference.py --device "$DEVICE" --steps "$STEPS" --batch "$BATCH" $EMBED "${EXEC[@]}"
  "${MALLOC[@]}" .venv/bin/python bench/torch_reference.py --device "$DEVICE" --steps "$STEPS" \
    --batch "$BATCH" $EMBED "${EXEC[@]}" | sed 's/"impl": "pytorch/"impl": "malloc-pytorch/'
done | tee /dev/stderr | .venv/bin/python -c '
import json, sys, statistics
rows = [json.loads(l) for l in sys.stdin if l.strip()]
med = lambda p: statistics.median(r["images_per_s"] for r in rows if r["impl"].startswith(p))
b, p, m = med("bcl"), med("pytorch"), med("malloc-pytorch")
print(f"median images/s: bcl {b:.0f}, pytorch {p:.0f}, ratio bcl/pytorch {b/p:.3f}")
print(f"median images/s: pytorch with the same malloc settings {m:.0f}, ratio bcl/pytorch-malloc {b/m:.3f}")
'
