"""Retrieval metrics, computed by the Rust library exactly as ``bcl metrics`` computes them."""

from __future__ import annotations

import os
from typing import Any, Sequence

from . import _bcl
from ._convert import features, labels


def retrieval(
    query: Any,
    query_labels: Any,
    gallery: Any = None,
    gallery_labels: Any = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict:
    """Class-level retrieval by cosine similarity of L2-normalised embeddings.

    Without a gallery every query searches all the other queries (leave-one-out), as
    ``bcl metrics`` does; with one, queries search the gallery. Returns ``map`` (mAP over the
    full ranking), ``map_at_100`` (GLDv2's definition), ``recall_at`` (``{k: share of queries
    with a relevant item in the top k}``) and ``queries`` (those with a relevant item).
    """
    q = features("query", query)
    ql = labels("query_labels", query_labels, q.shape[0])
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("gallery and gallery_labels go together")
    if gallery is None:
        return _bcl.retrieval(q, ql, None, None, list(ks))
    g = features("gallery", gallery)
    gl = labels("gallery_labels", gallery_labels, g.shape[0])
    return _bcl.retrieval(q, ql, g, gl, list(ks))


def revisited(
    query: Any, gallery: Any, gnd_path: str | os.PathLike, kappas: Sequence[int] = (1, 5, 10)
) -> dict:
    """The Revisited Oxford/Paris protocol (as ``bcl metrics --protocol revisited``).

    ``query`` ``[Q, d]`` and the database ``gallery`` ``[N, d]`` are L2-normalised embeddings;
    ``gnd_path`` the ground-truth pickle (``gnd_roxford5k.pkl`` layout). Returns ``easy``,
    ``medium`` and ``hard``, each with ``map``, ``mp_at`` (``{k: mean precision at k}``) and
    ``ap_per_query`` (``None`` for a query without a positive in that setup).
    """
    path = os.fspath(gnd_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such ground-truth file")
    return _bcl.revisited(features("query", query), features("gallery", gallery), path, list(kappas))
