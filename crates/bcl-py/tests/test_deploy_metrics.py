"""The compatibility matrix, criterion, update gain, backfill curve and flips from Python agree
with each other and with hand numbers."""

import numpy as np
import pytest

import bcl

rng = np.random.default_rng(3)
N, D = 60, 8
Y = np.arange(N) % 5


def feats(shift):
    centres = rng.standard_normal((5, D))
    x = centres[Y] * shift + rng.standard_normal((N, D))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


OLD, NEW = feats(1.0), feats(2.0)


def test_matrix_diagonal_is_leave_one_out_and_curve_ends_are_its_cells():
    m = bcl.metrics.compatibility_matrix({"old": OLD, "new": NEW}, Y)
    assert m["models"] == ["old", "new"]
    assert m["map"][0][0] == pytest.approx(bcl.metrics.retrieval(OLD, Y)["map"], abs=1e-12)
    assert m["map"][1][1] == pytest.approx(bcl.metrics.retrieval(NEW, Y)["map"], abs=1e-12)
    curve = bcl.metrics.backfill_curve(OLD, NEW, Y, fractions=(0.0, 0.5, 1.0), seed=1)
    assert [f for f, _ in curve] == [0.0, 0.5, 1.0]
    assert curve[0][1] == pytest.approx(m["map"][1][0], abs=1e-12)  # no backfill: new→old
    assert curve[2][1] == pytest.approx(m["map"][1][1], abs=1e-12)  # full backfill: new→new
    # one model against itself: every cell is its own figure
    same = bcl.metrics.compatibility_matrix({"a": OLD, "b": OLD}, Y)
    assert np.allclose(same["map"], same["map"][0][0])


def test_criterion_and_gain_by_hand():
    assert bcl.metrics.criterion(0.6, 0.5, 0.9) == (True, pytest.approx(0.25))
    assert bcl.metrics.criterion(0.4, 0.5) == (False, None)


def test_flips_of_a_system_against_itself_are_zero():
    f = bcl.metrics.flips(OLD, OLD, OLD, OLD, Y)
    assert f["negative"] == 0 and f["positive"] == 0 and f["before"] == f["after"]
    g = bcl.metrics.flips(OLD, OLD, NEW, NEW, Y)
    assert g["after"] - g["before"] == pytest.approx(g["positive"] - g["negative"], abs=1e-12)


def test_bad_deployment_input_raises():
    with pytest.raises(ValueError, match="rows"):
        bcl.metrics.compatibility_matrix({"old": OLD, "new": NEW[:-1]}, Y)
    with pytest.raises(ValueError, match="at least one"):
        bcl.metrics.compatibility_matrix({}, Y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bcl.metrics.backfill_curve(OLD, NEW, Y, fractions=(1.5,))
    with pytest.raises(ValueError, match="same items"):
        bcl.metrics.backfill_curve(OLD, NEW[:-1], Y)
