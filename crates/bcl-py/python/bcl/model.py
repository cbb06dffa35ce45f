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
        """Embedding dimension (of the model's own space)."""
        return int(self.card["arch"]["dim"])

    @property
    def compat_dim(self) -> int | None:
        """The dimension its projection head maps into (the old model's), for a new model
        trained in another dimension than its old model; ``None`` otherwise."""
        c = self.card["arch"].get("compat_dim")
        return None if c is None else int(c)

    def to_compat_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Its own embeddings ``[N, dim]`` (from :meth:`embed`) in the old model's space: the
        projection head and L2 normalisation for a model of another dimension than its old
        model, unchanged otherwise. Queries against a gallery of old vectors use these."""
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"embeddings: expected a torch.Tensor, got {type(embeddings).__name__}")
        return self._core.to_compat_space(embeddings.detach().cpu().float().contiguous())

    def embed(self, pixels: Any, batch: int = 256) -> torch.Tensor:
        """L2-normalised embeddings ``[N, d]`` of uint8 images ``[N, H, W]`` (grey) or
        ``[N, C, H, W]``, normalised as the model was trained."""
        a = to_numpy(pixels)
        if a.dtype != np.uint8:
            raise ValueError(f"pixels: expected uint8 images, got dtype {a.dtype}")
        return self._core.embed(np.ascontiguousarray(a), int(batch))
