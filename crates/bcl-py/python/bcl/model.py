"""A trained ``bcl`` model from Python: its card and its embeddings of raw images."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from ._bcl import ModelCore
from ._convert import to_numpy


class Model:
    """The model in a run directory written by ``bcl train-old`` / ``train-new`` (its weights
    are checked against the card's content id), on the CPU."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._core = ModelCore(os.fspath(path))
        #: The model card (``model.json``): name, role, method, arch, classes, ...
        self.card: dict = json.loads(self._core.card())

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.card["arch"]["dim"])

    def embed(self, pixels: Any, batch: int = 256) -> torch.Tensor:
        """L2-normalised embeddings ``[N, d]`` of uint8 images ``[N, H, W]`` (grey) or
        ``[N, C, H, W]``, normalised as the model was trained."""
        a = to_numpy(pixels)
        if a.dtype != np.uint8:
            raise ValueError(f"pixels: expected uint8 images, got dtype {a.dtype}")
        return self._core.embed(np.ascontiguousarray(a), int(batch))
