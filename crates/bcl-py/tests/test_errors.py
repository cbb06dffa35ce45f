"""Bad input from Python raises an exception naming the argument and the reason, never a crash."""

import numpy as np
import pytest

import bcl

F = np.eye(4)
Y = np.array([0, 0, 1, 1])


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: bcl.metrics.retrieval(np.ones(4), Y), ValueError, "2-d"),
        (lambda: bcl.metrics.retrieval(F, Y[:3]), ValueError, "3 labels for 4 rows"),
        (lambda: bcl.metrics.retrieval(F, Y.astype(float)), ValueError, "integer labels"),
        (lambda: bcl.metrics.retrieval(np.array([["a", "b"]]), Y[:1]), ValueError, "numbers"),
        (lambda: bcl.metrics.retrieval(np.full((4, 4), np.nan), Y), ValueError, "not finite"),
        (lambda: bcl.metrics.retrieval(F, Y, F), ValueError, "go together"),
        (lambda: bcl.metrics.retrieval(F, Y, np.eye(3, 5), Y[:3]), ValueError, "dimension"),
        (lambda: bcl.metrics.retrieval(F, Y, ks=[0]), ValueError, "k must be >= 1"),
        (lambda: bcl.metrics.retrieval(np.zeros((0, 4)), Y[:0]), ValueError, "non-empty"),
        (lambda: bcl.metrics.revisited(F, F, "/no/such/gnd.pkl"), FileNotFoundError, "gnd.pkl"),
        (lambda: bcl.splits.split(Y, scenario="sideways"), ValueError, "extended-data"),
        (lambda: bcl.splits.split(Y, fraction=1.5), ValueError, "fraction"),
        (lambda: bcl.splits.split(np.array([0, -1])), ValueError, "negative"),
        (lambda: bcl.splits.split(Y, classes=1), ValueError, "classes = 1"),
    ],
)
def test_bad_input_raises(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_a_damaged_ground_truth_file_is_a_bcl_error(tmp_path):
    p = tmp_path / "gnd.pkl"
    p.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(bcl.BclError, match="gnd.pkl"):
        bcl.metrics.revisited(F, F, p)


def test_another_torch_release_is_refused_at_import():
    """The extension links one torch release's libtorch: with another torch (here a stand-in
    module reporting 2.0.0, put in place before bcl is imported) the import fails saying which
    release it needs, before the extension is loaded."""
    import subprocess
    import sys

    code = (
        "import sys, types; fake = types.ModuleType('torch'); fake.__version__ = '2.0.0+cpu'; "
        "sys.modules['torch'] = fake; import bcl"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and f"torch=={bcl.TORCH_VERSION}" in r.stderr, r.stderr
    assert "torch 2.0.0+cpu is installed" in r.stderr, r.stderr
