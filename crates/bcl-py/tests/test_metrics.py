"""bcl.metrics equals the golden files (the same ones the Rust tests check) to 1e-6, from NumPy
arrays and from torch tensors."""

import json

import numpy as np
import pytest
import torch

import bcl


def close(a, b):
    assert a == pytest.approx(b, abs=1e-6)


def test_leave_one_out_matches_golden(golden):
    s = json.loads((golden / "class_retrieval.json").read_text())["leave_one_out"]
    m = bcl.metrics.retrieval(np.array(s["F"]), np.array(s["labels"]))
    close(m["map"], s["expected"]["map"])
    for k in (1, 5, 10):
        close(m["recall_at"][k], s["expected"]["recall_at"][str(k)])


def test_query_gallery_matches_golden_from_numpy_and_torch(golden):
    s = json.loads((golden / "class_retrieval.json").read_text())["query_gallery"]
    args = (s["Q"], s["query_labels"], s["G"], s["gallery_labels"])
    for convert in (np.array, torch.tensor, lambda x: torch.tensor(x, dtype=torch.float32)):
        q, ql, g, gl = (convert(a) for a in args)
        if ql.dtype.is_floating_point if isinstance(ql, torch.Tensor) else False:
            ql, gl = ql.long(), gl.long()
        m = bcl.metrics.retrieval(q, ql, g, gl)
        tol = 1e-6 if getattr(q, "dtype", None) != torch.float32 else 1e-5
        assert m["map"] == pytest.approx(s["expected"]["map"], abs=tol)
        assert m["map_at_100"] == pytest.approx(s["expected"]["map_at_100"], abs=tol)
        for k in (1, 5, 10):
            assert m["recall_at"][k] == pytest.approx(s["expected"]["recall_at"][str(k)], abs=tol)


def test_revisited_matches_golden(golden):
    s = json.loads((golden / "revisited.json").read_text())
    m = bcl.metrics.revisited(
        np.array(s["Q"]), np.array(s["X"]), golden / "revisited_gnd.pkl", s["kappas"]
    )
    for setup in ("easy", "medium", "hard"):
        want = s["expected"][setup]
        close(m[setup]["map"], want["map"])
        for k in s["kappas"]:
            close(m[setup]["mp_at"][k], want["mp_at"][str(k)])
        for got, exp in zip(m[setup]["ap_per_query"], want["ap_per_query"]):
            assert (got is None) == (exp is None)
            if exp is not None:
                close(got, exp)


def test_methods_come_from_the_registry():
    names = list(bcl.methods())
    for m in ("independent", "l2", "bct", "ndpp", "odpp"):
        assert m in names
