"""Retrieval metrics, computed by the Rust library exactly as ``bcl metrics`` computes them."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from . import _bcl
from . import _convert


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
    q = _convert.features("query", query)
    ql = _convert.labels("query_labels", query_labels, q.shape[0])
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("gallery and gallery_labels go together")
    if gallery is None:
        return _bcl.retrieval(q, ql, None, None, list(ks))
    g = _convert.features("gallery", gallery)
    gl = _convert.labels("gallery_labels", gallery_labels, g.shape[0])
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
    return _bcl.revisited(_convert.features("query", query), _convert.features("gallery", gallery), path, list(kappas))


def _same_items(per_model: dict, y: Any):
    names = list(per_model)
    feats = [_convert.features(n, per_model[n]) for n in names]
    return names, feats, _convert.labels("labels", y, feats[0].shape[0])


def compatibility_matrix(features: dict, labels: Any) -> dict:
    """The compatibility matrix of several models on one labelled test set.

    ``features`` maps each model's name to its embeddings ``[N, d]`` of the same items (in the
    same order); every (query model, gallery model) pair is scored leave-one-out, as ``bcl
    eval`` does. Returns ``models``, ``map`` and ``recall_at_1`` (rows query model, columns
    gallery model)."""
    if not features:
        raise ValueError("features: at least one model")
    names, feats, y = _same_items(features, labels)
    return _bcl.compatibility_matrix(names, feats, y)


def criterion(cross: float, old_old: float, indep: Optional[float] = None):
    """``(compatible, gain)``: the criterion ``M(new→old) > M(old→old)`` and the update gain
    ``(M(new→old) − M(old→old)) / (M(indep→indep) − M(old→old))`` (``None`` without ``indep``
    or where undefined)."""
    return _bcl.criterion(float(cross), float(old_old), None if indep is None else float(indep))


def backfill_curve(
    old: Any, new: Any, labels: Any, fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0
):
    """``[(fraction, mAP)]`` of new queries against a gallery with that share re-embedded by
    the new model (seeded order), ``old`` and ``new`` the two models' embeddings of the same
    items; fraction 0 is the cross-test, 1 the new model's self-test."""
    o = _convert.features("old", old)
    n = _convert.features("new", new)
    return _bcl.backfill_curve(o, n, _convert.labels("labels", labels, o.shape[0]), [float(f) for f in fractions], int(seed))


def flips(old_query: Any, old_gallery: Any, new_query: Any, new_gallery: Any, labels: Any) -> dict:
    """Top-1 flips of a new system (its queries against its gallery) against the old one, on
    the same items, leave-one-out: ``negative`` (right before, wrong after), ``positive``,
    ``before`` and ``after`` (top-1 accuracy). For the no-backfill case pass the old gallery as
    ``new_gallery``."""
    arrays = [_convert.features(n, a) for n, a in (("old_query", old_query), ("old_gallery", old_gallery), ("new_query", new_query), ("new_gallery", new_gallery))]
    return _bcl.flips(*arrays, _convert.labels("labels", labels, arrays[0].shape[0]))
