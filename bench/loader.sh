#!/usr/bin/env bash
# Is the image loader a bottleneck? Decoding throughput of `bcl bench-loader` (JPEGs of
# 500x375, resized to 256 and cropped to 224, random crop and flip, in parallel) against the
# training throughput of ResNet-18 at 224x224 (`bcl bench`), on the same machine in the same
# run. A ratio loader/train above 1 means the loader keeps up.
# Usage: bench/loader.sh [--device cpu|cuda] [--batch N] [--steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cpu; BATCH=32; STEPS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2;;
    --batch) BATCH=$2; shift 2;;
    --steps) STEPS=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
./scripts/build-cli.sh
{
  ./target/release/bcl bench-loader --images 512 --batch 64
  ./target/release/bcl bench --config bench/resnet18.toml --size 224 --batch "$BATCH" --steps "$STEPS" --warmup 1 --device "$DEVICE"
} | tee /dev/stderr | .venv/bin/python -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
l = next(r["images_per_s"] for r in rows if r["impl"] == "bcl-loader")
t = next(r["images_per_s"] for r in rows if r["impl"] != "bcl-loader")
print(f"images/s: loader {l:.0f}, ResNet-18 training step {t:.1f}, ratio loader/train {l/t:.1f}")
'
