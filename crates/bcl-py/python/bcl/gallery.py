"""A ``bcl`` gallery from Python: the same stores, lineage rules and errors as ``bcl gallery``."""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

import torch

from ._bcl import GalleryCore
from ._convert import vectors
from .model import Model

ModelRef = Union[Model, str, None]


_vectors = vectors


def _identity(model: ModelRef) -> dict:
    if model is None:
        return {}
    if isinstance(model, Model):
        return {"card": json.dumps(model.card)}
    if isinstance(model, str):
        return {"model": model}
    raise ValueError(f"model: expected a bcl.Model or a name, got {type(model).__name__}")


class Gallery:
    """A vector gallery that outlives its model (``bcl gallery``'s stores).

    Vectors are written under a model's identity: a :class:`bcl.Model` (its card, with the
    model it declares itself compatible with) or the name of an outside model. A model may write
    to or search a gallery when every model with vectors there is itself or the model its card
    declares; ``force=True`` overrides a refusal (the verdict says so).
    """

    def __init__(self, core: GalleryCore) -> None:
        self._core = core

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Gallery":
        """Opens the gallery in ``path``."""
        return cls(GalleryCore.open(os.fspath(path)))

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        dim: int,
        backend: Optional[str] = None,
        milvus_uri: Optional[str] = None,
        milvus_collection: Optional[str] = None,
        quantization: str = "f32",
    ) -> "Gallery":
        """Creates an empty gallery of dimension ``dim`` (``backend``: "hnsw", the project's
        HNSW engine, float32; "usearch"; or "milvus". By default "hnsw", or "usearch" when
        ``quantization``, the index's precision, is "bf16" or "f16", which only usearch keeps)."""
        return cls(
            GalleryCore.create(
                os.fspath(path), int(dim), backend, milvus_uri, milvus_collection, quantization
            )
        )

    @property
    def dim(self) -> int:
        return self._core.dim

    @property
    def backend(self) -> str:
        return self._core.backend

    def __len__(self) -> int:
        return len(self._core)

    def add(self, vectors: Any, model: ModelRef, first_id: Optional[int] = None, force: bool = False):
        """Adds ``vectors`` ``[n, dim]`` computed by ``model`` with consecutive ids from
        ``first_id`` (default: after the largest); returns ``(ids range, lineage verdict)``."""
        if model is None:
            raise ValueError("model: vectors are added under a model (a bcl.Model or a name)")
        first, end, verdict = self._core.add(
            _vectors("vectors", vectors), first_id=first_id, force=force, **_identity(model)
        )
        return range(first, end), verdict

    def search(
        self,
        queries: Any,
        k: int = 10,
        model: ModelRef = None,
        exact: bool = True,
        force: bool = False,
        adapter: Any = None,
        old_queries: Any = None,
    ):
        """The ``k`` nearest items of each query row: ``(ids [Q, k] uint64, scores [Q, k]
        float32, verdict)``; ``model`` (the queries' model) is checked against the gallery's
        lineage, ``exact=False`` uses the approximate index. With ``adapter`` (a
        :class:`bcl.adapters.Adapter` fitted between ``model`` and the gallery's model), the
        rows are ``model``'s own embeddings, mapped into the gallery's space first
        (``old_queries``: the gallery's model's embeddings of the same queries, for slerp), and
        the lineage check asks that the adapter joins the two."""
        if adapter is None:
            if old_queries is not None:
                raise ValueError("old_queries: only an adapter (slerp) reads them")
            return self._core.search(
                _vectors("queries", queries), int(k), exact=exact, force=force, **_identity(model)
            )
        from .adapters import Adapter

        if not isinstance(adapter, Adapter):
            raise ValueError(f"adapter: expected a bcl.adapters.Adapter, got {type(adapter).__name__}")
        if model is None:
            raise ValueError("model: searching through an adapter needs the query model (a bcl.Model or a name)")
        q = torch.from_numpy(_vectors("queries", queries))
        c = None if old_queries is None else torch.from_numpy(_vectors("old_queries", old_queries))
        return self._core.search_adapted(
            q, adapter._core, int(k), companion=c, exact=exact, force=force, **_identity(model)
        )

    def set_search_expansion(self, ef: int) -> None:
        """The approximate index's candidate list size for ``exact=False`` searches (HNSW's
        ef; the default 64)."""
        self._core.set_search_expansion(int(ef))

    def status(self) -> dict:
        """Backend, dimension, items, and items per model name."""
        return self._core.status()
