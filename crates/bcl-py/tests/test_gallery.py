"""bcl.Gallery: a gallery written from Python is searched by the CLI and the reverse; the
lineage rules and their errors are the CLI's."""

import json
import subprocess

import numpy as np
import pytest

import bcl

rng = np.random.default_rng(0)


def unit(n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_python_writes_the_cli_searches(tmp_path, bcl_cli):
    g = bcl.Gallery.create(tmp_path / "g", 16)
    v = unit(50, 16)
    ids, verdict = g.add(v, model="m1")
    assert list(ids) == list(range(50)) and verdict == "same model" and len(g) == 50
    ids, scores, verdict = g.search(v[:3], k=2, model="m1")
    assert ids[:, 0].tolist() == [0, 1, 2] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    del g  # release the store's lock for the CLI
    np.save(tmp_path / "q.npy", v[[7, 9]])
    out = subprocess.run(
        [bcl_cli, "gallery", "search", "--store", tmp_path / "g", "--vectors", tmp_path / "q.npy",
         "--name", "m1", "--k", "3", "--exact", "--device", "cpu"],
        check=True, capture_output=True, text=True,
    ).stdout
    hits = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [h["hits"][0]["id"] for h in hits] == [7, 9]


def test_the_cli_writes_python_searches(tmp_path, bcl_cli):
    v = unit(20, 8)
    np.save(tmp_path / "v.npy", v)
    subprocess.run(
        [bcl_cli, "gallery", "add", "--store", tmp_path / "g", "--vectors", tmp_path / "v.npy",
         "--name", "cli-model", "--create", "--device", "cpu"],
        check=True, capture_output=True,
    )
    g = bcl.Gallery.open(tmp_path / "g")
    # the default backend is the project's HNSW engine
    assert g.status() == {"backend": "hnsw", "dim": 8, "items": 20, "models": {"cli-model": 20}}
    ids, _, _ = g.search(v[5:6], k=1, model="cli-model")
    assert ids[0, 0] == 5
    # an unrelated model may not search it, unless forced (and then the verdict says so)
    with pytest.raises(bcl.BclError, match="neither the model"):
        g.search(v[5:6], k=1, model="other")
    _, _, verdict = g.search(v[5:6], k=1, model="other", force=True)
    assert verdict.startswith("FORCED")
    # nor write into it
    with pytest.raises(bcl.BclError, match="neither the model"):
        g.add(unit(2, 8), model="other")
    # the approximate index answers too, at any search list size
    g.set_search_expansion(128)
    ids, _, _ = g.search(v[5:6], k=1, model="cli-model", exact=False)
    assert ids[0, 0] == 5
    with pytest.raises(ValueError, match="at least 1"):
        g.set_search_expansion(0)
    # raw queries of no declared model are searched as they are
    ids, scores, verdict = g.search(v[:2], k=25)
    assert verdict is None and ids.shape == (2, 25)
    assert ids[0, 20:].tolist() == [2**64 - 1] * 5 and np.isneginf(scores[0, 20:]).all()


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda g: g.add(unit(2, 5), model="m"), ValueError, "dimension"),
        (lambda g: g.add(np.full((1, 8), np.nan, np.float32), model="m"), ValueError, "non-finite"),
        (lambda g: g.add(unit(2, 8), model=None), ValueError, "model"),
        (lambda g: g.add(unit(2, 8), model=3), ValueError, "bcl.Model or a name"),
        (lambda g: g.search(unit(1, 8), k=0), ValueError, "k must be at least 1"),
        (lambda g: g.search(np.ones(8, np.float32)), ValueError, "2-d"),
        (lambda g: g.search(np.ones((1, 8), np.int64)), ValueError, "floating-point"),
    ],
)
def test_bad_gallery_input_raises(tmp_path, call, exc, words):
    g = bcl.Gallery.create(tmp_path / "g", 8)
    with pytest.raises(exc, match=words):
        call(g)


def test_missing_and_existing_galleries(tmp_path):
    with pytest.raises(FileNotFoundError):
        bcl.Gallery.open(tmp_path / "none")
    bcl.Gallery.create(tmp_path / "g", 4)
    with pytest.raises(ValueError, match="already exists"):
        bcl.Gallery.create(tmp_path / "g", 4)
    with pytest.raises(ValueError, match="backend"):
        bcl.Gallery.create(tmp_path / "h", 4, backend="faiss")


@pytest.mark.parametrize("quantization, tol", [("bf16", 1e-2), ("f16", 1e-3)])
def test_half_precision_index(tmp_path, quantization, tol):
    g = bcl.Gallery.create(tmp_path / "g", 16, quantization=quantization)
    v = unit(50, 16)
    g.add(v, model="m")
    for exact in (True, False):
        ids, scores, _ = g.search(v[:10], k=1, exact=exact)
        assert ids[:, 0].tolist() == list(range(10))
        assert np.abs(scores[:, 0] - 1.0).max() < 4 * tol
    # the setting is the gallery's: it survives a reopen (the store's lock goes with it)
    del g
    ids, _, _ = bcl.Gallery.open(tmp_path / "g").search(v[3:4], k=1, exact=False)
    assert ids[0, 0] == 3
    with pytest.raises(ValueError, match="bf16"):
        bcl.Gallery.create(tmp_path / "h", 16, quantization="int8")


def test_the_projects_hnsw_backend_from_python_and_the_cli(tmp_path, bcl_cli):
    g = bcl.Gallery.create(tmp_path / "g", 16)
    v = unit(300, 16)
    g.add(v, model="m")
    g.set_search_expansion(300)
    for exact in (True, False):
        ids, scores, _ = g.search(v[:20], k=1, exact=exact)
        assert ids[:, 0].tolist() == list(range(20))
        assert np.abs(scores[:, 0] - 1.0).max() < 1e-5
    assert g.status()["backend"] == "hnsw"
    del g
    # the CLI opens it by the backend its gallery.json names, and searches its graph
    np.save(tmp_path / "q.npy", v[[4, 8]])
    out = subprocess.run(
        [bcl_cli, "gallery", "search", "--store", tmp_path / "g", "--vectors", tmp_path / "q.npy",
         "--name", "m", "--k", "1", "--device", "cpu"],
        check=True, capture_output=True, text=True,
    ).stdout
    hits = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [h["hits"][0]["id"] for h in hits] == [4, 8]
    # float32 only: a half-precision request is refused, naming the backend that has it, and
    # without a backend named it goes to usearch
    with pytest.raises(ValueError, match="float32"):
        bcl.Gallery.create(tmp_path / "h", 16, backend="hnsw", quantization="bf16")
    assert bcl.Gallery.create(tmp_path / "u", 16, quantization="bf16").status()["backend"] == "usearch"
    assert bcl.Gallery.create(tmp_path / "w", 16, backend="usearch").status()["backend"] == "usearch"


def test_the_hnsw_kernel_is_the_widest_this_cpu_runs(monkeypatch):
    # the float32 kernel the gallery's HNSW index scores with, read from the CPU's flags here
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    want = "avx512f" if "avx512f" in flags else "avx2+fma" if {"avx2", "fma"} <= flags else "portable"
    monkeypatch.delenv("BCL_KERNEL", raising=False)
    assert bcl.hnsw_kernel() == want
    monkeypatch.setenv("BCL_KERNEL", "portable")
    assert bcl.hnsw_kernel() == "portable"
    monkeypatch.setenv("BCL_KERNEL", "usearch")
    assert bcl.hnsw_kernel() == "usearch"
