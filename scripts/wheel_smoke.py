"""Smoke test of an installed bcl wheel (scripts/test-wheel.sh runs it in a fresh virtual
environment): the metadata pins the torch it links, a compatibility loss has a gradient,
metrics match a hand computation, and a gallery round-trips through its files."""

import importlib.metadata
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

import bcl

requires = importlib.metadata.requires("bcl") or []
assert f"torch=={bcl.TORCH_VERSION}" in [r.replace(" ", "") for r in requires], requires
assert bcl.__file__.startswith(sys.prefix), f"bcl imported from {bcl.__file__}, not this venv"

# a loss with a gradient: BCT's influence loss against plain PyTorch
torch.manual_seed(0)
p = F.normalize(torch.randn(6, 8), dim=1)
f = F.normalize(torch.randn(12, 8), dim=1).requires_grad_(True)
y = torch.arange(12) % 6
loss = bcl.losses.BCTLoss(p, lambda_=1.0, scale=16.0)(f, y)
loss.backward()
want = F.cross_entropy(16.0 * f.detach() @ p.T, y)
assert abs(loss.item() - want.item()) < 1e-5 and f.grad is not None and f.grad.abs().sum() > 0

# metrics by hand: two classes of two identical points each, leave-one-out: mAP 1, R@1 1
x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
m = bcl.metrics.retrieval(x, np.array([0, 0, 1, 1]))
assert abs(m["map"] - 1.0) < 1e-9 and abs(m["recall_at"][1] - 1.0) < 1e-9, m

# a gallery round trip: written, closed, reopened, searched
with tempfile.TemporaryDirectory() as d:
    v = np.eye(8, dtype=np.float32)
    g = bcl.Gallery.create(f"{d}/g", 8)
    g.add(v, model="m1")
    del g
    g = bcl.Gallery.open(f"{d}/g")
    ids, scores, verdict = g.search(v[[3, 5]], k=1, model="m1")
    assert ids[:, 0].tolist() == [3, 5] and np.allclose(scores[:, 0], 1.0), (ids, scores)
print(f"wheel smoke test passed: bcl {importlib.metadata.version('bcl')} with torch {torch.__version__} in {sys.prefix}")
