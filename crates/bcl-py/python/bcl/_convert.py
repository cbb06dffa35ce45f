"""Conversion of user inputs (NumPy arrays, torch tensors, nested lists) to the contiguous
float64 / int64 arrays the extension takes, with shape checks that name the argument."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy view or copy of a torch tensor (detached, on the CPU), array or nested list."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu").numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(x)


def vectors(name: str, x: Any) -> np.ndarray:
    """A ``[n, dim]`` matrix of floating-point vectors as contiguous float32."""
    a = to_numpy(x)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d [n, dim] array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected floating-point vectors, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def features(name: str, x: Any) -> np.ndarray:
    """A ``[n, d]`` matrix of floats as contiguous float64."""
    a = to_numpy(x)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d [n, d] array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name}: expected numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float64)


def labels(name: str, y: Any, rows: int | None = None) -> np.ndarray:
    """A vector of integer labels as contiguous int64 (one per row when ``rows`` is given)."""
    a = to_numpy(y)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of labels, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected integer labels, got dtype {a.dtype}")
    if rows is not None and a.shape[0] != rows:
        raise ValueError(f"{name}: {a.shape[0]} labels for {rows} rows")
    return np.ascontiguousarray(a, dtype=np.int64)
