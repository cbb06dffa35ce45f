#!/usr/bin/env bash
# Data-parallel training on this machine: the quick preset's old model (Fashion-MNIST) trained
# on 1 rank (all cores), on 1 rank with one thread, and on 2 ranks under torchrun (one thread
# each, Gloo on loopback), each three times alternated; prints the median step time, the share
# rank 0 spent in collectives and the throughput, then the bytes a step moves at GLDv2 scale
# (81,313 classes, d = 512, ResNet-18, batch 256) from `bcl bench-dist`.
# Usage: bench/dist.sh [--epochs N]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) EPOCHS=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
BCL=target/release/bcl
[ -x "$BCL" ] || ./scripts/build-cli.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CORES=$(nproc)
run() { # name, launcher...
  local name=$1; shift
  local out="$WORK/run-$RANDOM-$REP"
  "$@" train-old --quick --device cpu --epochs "$EPOCHS" --out "$out" >/dev/null 2>"$out.log" \
    || { cat "$out.log" >&2; exit 1; }
  printf '%s\t%s\n' "$name" "$out"
}
for REP in 1 2 3; do
  OMP_NUM_THREADS=$CORES run "1 rank, $CORES threads" "$BCL"
  OMP_NUM_THREADS=1 run "1 rank, 1 thread" "$BCL"
  run "2 ranks, 1 thread each" .venv/bin/torchrun --standalone --nproc-per-node=2 --no-python "$BCL"
done >"$WORK/runs.txt"
.venv/bin/python - "$WORK/runs.txt" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, path = line.rstrip("\n").split("\t")
    hist = json.load(open(path + "/history.json"))
    runs.setdefault(name, []).append(hist)
print(f"| setting | step time (ms) | in collectives | images/s | final loss |")
print(f"|---|---|---|---|---|")
for name, hs in runs.items():
    # every epoch after the first (warm caches); steps = images / batch (64)
    step, comm, ips, loss = [], [], [], []
    for h in hs:
        later = h[1:] or h
        secs = sum(e["seconds"] for e in later)
        imgs = sum(e["images_per_s"] * e["seconds"] for e in later)
        steps = imgs / 64
        step.append(1000 * secs / steps)
        comm.append(sum(e.get("comm_seconds", 0.0) for e in later) / secs)
        ips.append(imgs / secs)
        loss.append(h[-1]["loss_total"])
    print(f"| {name} | {statistics.median(step):.1f} | {100*statistics.median(comm):.1f}% "
          f"| {statistics.median(ips):.0f} | {statistics.median(loss):.4f} |")
PY
echo
echo "bytes per step at GLDv2 scale (bcl bench-dist, ResNet-18, d = 512, 81,313 classes, batch 256):"
"$BCL" bench-dist --ranks 1,2,4,8
