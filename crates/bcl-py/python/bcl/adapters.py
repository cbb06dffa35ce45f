"""Adapters fitted after training between two models' spaces (``bcl adapt``), from Python.

``fit`` takes paired embeddings of the same items by the old and the new model (NumPy arrays or
torch tensors) and returns an :class:`Adapter`; ``apply`` maps vectors; ``save`` and ``load``
use the CLI's files (``adapter.safetensors`` and the card ``adapter.json``), so an adapter
fitted here serves ``bcl gallery search --adapter`` and one fitted by ``bcl adapt fit`` loads
here. ``Gallery.search(..., adapter=...)`` searches a gallery through one. Kinds and their
formulations: docs/method.md, "Adapters"."""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

import numpy as np
import torch

from ._bcl import AdapterCore, adapter_kinds
from ._convert import to_numpy, vectors
from .model import Model

Side = Union[Model, str, None]


def _matrix(name: str, x: Any) -> torch.Tensor:
    return torch.from_numpy(vectors(name, x))


def _side(name: str, m: Side) -> dict:
    if m is None:
        return {}
    if isinstance(m, Model):
        return {f"{name}_card": json.dumps(m.card)}
    if isinstance(m, str):
        return {f"{name}_name": m}
    raise ValueError(f"{name}_model: expected a bcl.Model or a name, got {type(m).__name__}")


class Adapter:
    """A fitted adapter: its card (``.card``: kind, direction, both models' ids and dimensions,
    the support set's fingerprint, the settings and the fit's figures) and its map."""

    def __init__(self, core: AdapterCore) -> None:
        self._core = core
        #: The adapter card (``adapter.json``).
        self.card: dict = json.loads(core.card())

    @property
    def kind(self) -> str:
        """``procrustes``, ``slerp``, ``affine`` or ``forward``."""
        return str(self.card["kind"])

    def apply(self, x: Any, companion: Any = None) -> torch.Tensor:
        """Maps ``x`` ``[N, d_from]`` into the target space (unit rows); ``companion``: the old
        model's embeddings of the same queries (slerp) or side information (a forward adapter
        fitted with it)."""
        c = None if companion is None else _matrix("companion", companion)
        return self._core.apply(_matrix("x", x), c)

    def save(self, path: str | os.PathLike) -> None:
        """Writes ``adapter.safetensors`` and ``adapter.json`` into the directory ``path``."""
        self._core.save(os.fspath(path))
        self.card = json.loads(self._core.card())


def fit(
    kind: str,
    old: Any,
    new: Any,
    labels: Any = None,
    side_info: Any = None,
    settings: Optional[dict] = None,
    seed: Optional[int] = None,
    alpha: Optional[float] = None,
    old_model: Side = None,
    new_model: Side = None,
) -> Adapter:
    """Fits an adapter of ``kind`` on paired embeddings ``old`` ``[N, d_old]`` and ``new``
    ``[N, d_new]`` of the same items. ``labels`` (class ids, SLERP chooses its weight with
    them), ``side_info`` (forward), ``settings`` (a dict with the sections of ``bcl adapt fit
    --settings``: ``slerp``, ``affine``, ``forward``), ``alpha`` (SLERP's weight, fixed);
    ``old_model``/``new_model`` name each side (a :class:`bcl.Model` or a name) so that a
    gallery can check the adapter joins its model and the query model."""
    if not isinstance(kind, str):
        raise ValueError(f"kind: expected a name, got {type(kind).__name__}")
    lab = None
    if labels is not None:
        la = to_numpy(labels)
        if la.ndim != 1 or not np.issubdtype(la.dtype, np.integer):
            raise ValueError(f"labels: expected a 1-d integer array, got shape {la.shape} dtype {la.dtype}")
        lab = [int(v) for v in la]
    core = AdapterCore.fit(
        kind,
        _matrix("old", old),
        _matrix("new", new),
        labels=lab,
        side_info=None if side_info is None else _matrix("side_info", side_info),
        settings=None if settings is None else json.dumps(settings),
        seed=None if seed is None else int(seed),
        alpha=None if alpha is None else float(alpha),
        **_side("old", old_model),
        **_side("new", new_model),
    )
    return Adapter(core)


def load(path: str | os.PathLike) -> Adapter:
    """The adapter in ``path`` (its directory or its ``adapter.json``), its tensors checked
    against the card."""
    return Adapter(AdapterCore.load(os.fspath(path)))


def kinds() -> list[tuple[str, str, str]]:
    """The adapter kinds: (name, direction, description) each."""
    return [tuple(k) for k in adapter_kinds()]
