#!/usr/bin/env bash
# The device check, run on a lent GPU machine over a copy of the working tree with the binary
# built here (carry target/release/bcl): a few training steps and an evaluation on
# --device $DEVICE, NDPP included, the training-step bench on CUDA, the execution settings
# (bfloat16 autocast and channels-last: a training run and an evaluation under them, the bench
# with each), exact search on the device, and (with two GPUs) a 2-rank run under torchrun. Figures and logs go to $OUT (or ./gpu-check-out).
#
# The binary links libtorch 2.13 (tch 0.26); the device image's PyTorch may be another
# version: its lib/ is put on LD_LIBRARY_PATH and the first command says at once whether the
# binary runs against it. Not yet run on a GPU (no session so far was lent one).
set -euo pipefail
cd "$(dirname "$0")/.."
BCL=${BCL:-target/release/bcl}
DEVICE=${DEVICE:-cuda}        # DEVICE=cpu PYTHON=.venv/bin/python checks the script itself here
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
TORCH_LIB=$($PYTHON -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
{ nvidia-smi -L || echo "no nvidia-smi"; } | tee "$OUT/gpus.txt"
$PYTHON -c "import torch; print('device torch', torch.__version__)" | tee -a "$OUT/gpus.txt"
"$BCL" methods >/dev/null
# random IDX files: 10 classes, 300 training and 50 test images per class, 28 x 28
WORK=$(mktemp -d)
$PYTHON - "$WORK/data" <<'PY'
import gzip, os, struct, sys, numpy as np
d = sys.argv[1]; os.makedirs(d, exist_ok=True); rng = np.random.default_rng(0)
protos = rng.integers(0, 256, (10, 28, 28))
def write(name, n):
    y = np.repeat(np.arange(10), n).astype(np.uint8)
    x = np.clip(protos[y] + rng.normal(0, 40, (len(y), 28, 28)), 0, 255).astype(np.uint8)
    with gzip.open(f"{d}/{name}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(y), 28, 28) + x.tobytes())
    with gzip.open(f"{d}/{name}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(y)) + y.tobytes())
write("train", 300); write("t10k", 50)
PY
CFG="$WORK/c.toml"
printf '[data]\ndir = "%s"\n[model]\nwidth = 16\ndim = 64\n[old]\nepochs = 2\n[new]\nepochs = 2\n' "$WORK/data" > "$CFG"
set -o pipefail
{
  time "$BCL" train-old --device $DEVICE --config "$CFG" --out "$WORK/old"
  time "$BCL" train-new --device $DEVICE --method ndpp --old "$WORK/old" --out "$WORK/ndpp"
  "$BCL" eval --device $DEVICE --model "$WORK/old" --model "$WORK/ndpp"
  "$BCL" bench --device "$DEVICE" --batch 256 --steps 50
  "$BCL" bench --device cpu --batch 256 --steps 5
} 2>&1 | tee "$OUT/cuda.log"
# the execution settings: a run trained under both, evaluated under both (its figures beside
# the float32 evaluation's), and the step and the embedding pass timed with each
printf '[old.exec]\nautocast = "bf16"\nchannels_last = true\n' | cat "$CFG" - > "$WORK/exec.toml"
{
  time "$BCL" train-old --device $DEVICE --config "$WORK/exec.toml" --out "$WORK/old-exec"
  "$BCL" eval --device $DEVICE --model "$WORK/old-exec"
  "$BCL" eval --device $DEVICE --model "$WORK/old-exec" --autocast bf16 --channels-last
  for flags in "" "--autocast bf16" "--channels-last" "--autocast bf16 --channels-last"; do
    "$BCL" bench --device "$DEVICE" --batch 256 --steps 50 $flags
    "$BCL" bench --device "$DEVICE" --batch 1024 --steps 50 --embed $flags
  done
} 2>&1 | tee "$OUT/exec.log"
# exact search on the device (libtorch's blocked topk) and on the CPU (the fused search)
$PYTHON - "$WORK" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
for name, n in (("q", 10000), ("g", 100000)):
    x = rng.standard_normal((n, 128), dtype=np.float32)
    np.save(f"{sys.argv[1]}/{name}.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
PY
for dev in "$DEVICE" cpu; do
  "$BCL" search --device $dev --query "$WORK/q.npy" --gallery "$WORK/g.npy" --k 10 \
    --out-indices "$WORK/i-$dev.npy"
done 2>&1 | tee "$OUT/search.log"
$PYTHON -c "import numpy as np, sys; a, b = (np.load(f'$WORK/i-{d}.npy') for d in ('$DEVICE', 'cpu')); print('top-10 agreement device/cpu', (a == b).mean())" | tee -a "$OUT/search.log"
if [ "$DEVICE" = cuda ] && [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  $PYTHON -m torch.distributed.run --standalone --nproc-per-node=2 --no-python \
    "$BCL" train-new --device $DEVICE --method ndpp --old "$WORK/old" --out "$WORK/ndpp2" \
    2>&1 | tee "$OUT/two-ranks.log"
fi
echo "gpu-check: done; logs in $OUT"
