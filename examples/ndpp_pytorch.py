"""Train a new model in plain PyTorch against an old `bcl` model with NDPP, and score it.

    ./scripts/setup.sh --python
    .venv/bin/python examples/ndpp_pytorch.py            # trains the old model with the CLI first
    .venv/bin/python examples/ndpp_pytorch.py --old runs/old

The old model is a `bcl` run directory (`bcl train-old`; trained here with the `--quick`
preset when --old is not given). The new model is a small PyTorch CNN trained on every
training image (the extended-data scenario) with a cosine classifier plus `bcl.losses.NDPPLoss`
against the old model's class prototypes, refreshed each epoch from a bank of its own features.
`bcl.metrics` then scores old→old, new→new and new→old (new queries against the old gallery).
`--validation` scores held-out training images instead of the test set (for choosing
`--epochs`, `--lambda` and the like without reading test figures), `--seed` the new model's seed.
"""

import argparse
import gzip
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import bcl

ROOT = Path(__file__).resolve().parents[1]


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(data: Path, part: str, per_class: int, skip: int = 0):
    """The first `per_class` images of each class of `part`, after the first `skip` of each."""
    x = read_idx(data / f"{part}-images-idx3-ubyte.gz")
    y = read_idx(data / f"{part}-labels-idx1-ubyte.gz").astype(np.int64)
    keep = np.concatenate([np.flatnonzero(y == c)[skip : skip + per_class] for c in range(10)])
    keep.sort()
    return x[keep], y[keep]


class Net(torch.nn.Module):
    """A small CNN: `stages` convolution stages of `width`, 2·`width`, ... channels (each a 3×3
    convolution, batch norm and ReLU, all but the last followed by 2×2 max pooling), global
    average pooling, a linear map to `dim`, and a cosine classifier."""

    def __init__(self, dim: int, classes: int = 10, width: int = 16, stages: int = 2):
        super().__init__()
        layers, c_in = [], 1
        for i in range(stages):
            c = width * 2**i
            layers += [torch.nn.Conv2d(c_in, c, 3, padding=1), torch.nn.BatchNorm2d(c), torch.nn.ReLU()]
            if i < stages - 1:
                layers.append(torch.nn.MaxPool2d(2))
            c_in = c
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c_in, dim)]
        self.body = torch.nn.Sequential(*layers)
        self.classifier = torch.nn.Parameter(torch.randn(classes, dim) * 0.1)

    def forward(self, x):
        return F.normalize(self.body(x), dim=1)

    def logits(self, f):
        return 16.0 * f @ F.normalize(self.classifier, dim=1).T


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, help="an old bcl run directory (default: train one)")
    ap.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-per-class", type=int, default=400)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="the new model's seed")
    ap.add_argument("--width", type=int, default=32, help="channels of the CNN's first stage")
    ap.add_argument("--stages", type=int, default=3, help="convolution stages of the CNN")
    ap.add_argument("--lambda", dest="lambda_", type=float, default=1.0,
                    help="weight of the compatibility loss")
    ap.add_argument(
        "--validation", action="store_true",
        help="score on held-out training images (the next --test-per-class of each class after "
        "the training ones, which no model trains on) instead of the test set",
    )
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    old_dir = args.old
    if old_dir is None:
        old_dir = ROOT / "runs" / "example-old"
        if not (old_dir / "model.json").exists():
            print(f"training the old model with the CLI into {old_dir} ...", flush=True)
            subprocess.run(
                [ROOT / "target/release/bcl", "train-old", "--quick", "--device", "cpu",
                 "--data", args.data, "--out", old_dir],
                check=True, stdout=subprocess.DEVNULL,
            )
    old = bcl.Model(old_dir)
    xtr, ytr = load(args.data, "train", args.train_per_class)
    if args.validation:
        xte, yte = load(args.data, "train", args.test_per_class, skip=args.train_per_class)
    else:
        xte, yte = load(args.data, "t10k", args.test_per_class)

    # the old model's class prototypes over the new training set
    g = old.embed(xtr)
    protos = F.normalize(torch.stack([g[torch.from_numpy(ytr == c)].mean(0) for c in range(10)]), dim=1)
    comp = bcl.losses.NDPPLoss(protos, lambda_=args.lambda_, ndpp={"eps": 0.3})

    net = Net(old.dim, width=args.width, stages=args.stages)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x_all = torch.from_numpy(xtr).float().div(255.0).unsqueeze(1)
    y_all = torch.from_numpy(ytr)
    # the CLI's schedule: linear warm-up over 0.3 epochs, then cosine decay to zero
    per_epoch = (len(y_all) + 63) // 64
    total, warm = args.epochs * per_epoch, max(1, round(0.3 * per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: (k + 1) / warm if k < warm
        else 0.5 * (1 + math.cos(math.pi * (k - warm) / max(1, total - warm))),
    )
    t0, step = time.time(), 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(y_all))
        for b, start in enumerate(range(0, len(order), 64)):
            idx = order[start : start + 64]
            per_class = comp.refresh_due(epoch, b, step)
            if per_class:
                net.eval()
                with torch.no_grad():
                    bank = torch.cat([torch.nonzero(y_all == c).flatten()[:per_class] for c in range(10)])
                    stats = comp.refresh(net(x_all[bank]), y_all[bank], epoch, step)
                net.train()
                print(f"epoch {epoch + 1}: refreshed Δ, mean ‖δ‖ = {stats['mean_delta']:.3f}")
            f = net(x_all[idx])
            loss = F.cross_entropy(net.logits(f), y_all[idx]) + comp(f, y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)")

    net.eval()
    with torch.no_grad():
        new_te = net(torch.from_numpy(xte).float().div(255.0).unsqueeze(1))
    old_te = old.embed(xte)
    oo = bcl.metrics.retrieval(old_te, yte)
    nn_ = bcl.metrics.retrieval(new_te, yte)
    no = bcl.metrics.retrieval(new_te, yte, old_te, yte)
    part = "validation" if args.validation else "test"
    print(f"\n{len(yte)} {part} images; mAP (R@1)")
    print(f"old→old  {oo['map']:.4f} ({oo['recall_at'][1]:.4f})")
    print(f"new→new  {nn_['map']:.4f} ({nn_['recall_at'][1]:.4f})")
    print(f"new→old  {no['map']:.4f} ({no['recall_at'][1]:.4f})")
    margin = no["map"] - oo["map"]
    print(
        "compatible when new→old (new queries, old gallery) beats old→old: "
        f"{'yes' if margin > 0 else 'no'}, margin {margin:+.4f}"
    )


if __name__ == "__main__":
    sys.exit(main())
