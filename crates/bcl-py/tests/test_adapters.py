"""bcl.adapters: an adapter fitted from Python recovers a known rotation, round-trips through
the CLI's files (``bcl adapt show`` reads it), and a gallery answers queries through it with
the lineage refusing another query model; bad input is refused with the reason."""

import json
import subprocess

import numpy as np
import pytest
import torch

import bcl

rng = np.random.default_rng(3)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rotation(d):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


@pytest.fixture()
def pair():
    new = unit(rng.standard_normal((64, 8))).astype(np.float32)
    old = unit(new @ rotation(8)).astype(np.float32)
    return old, new


def test_procrustes_recovers_a_rotation_and_round_trips(pair, tmp_path, bcl_cli):
    old, new = pair
    a = bcl.adapters.fit("procrustes", old, torch.from_numpy(new), old_model="old-m", new_model="new-m")
    assert a.kind == "procrustes" and a.card["direction"] == "new-to-old"
    assert (a.card["from"]["id"], a.card["to"]["id"]) == ("new-m", "old-m")
    mapped = a.apply(new)
    assert mapped.shape == (64, 8) and mapped.dtype == torch.float32
    assert torch.allclose(mapped, torch.from_numpy(old), atol=1e-5)
    a.save(tmp_path / "a")
    b = bcl.adapters.load(tmp_path / "a")
    assert b.card["id"] == a.card["id"] and len(a.card["id"]) == 16
    assert torch.equal(b.apply(new[:5]), mapped[:5])
    shown = subprocess.run(
        [bcl_cli, "adapt", "show", tmp_path / "a"], check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(shown)["id"] == a.card["id"]
    assert {k[0] for k in bcl.adapters.kinds()} == {"procrustes", "slerp", "affine", "forward"}


def test_a_gallery_is_searched_through_an_adapter(pair, tmp_path):
    old, new = pair
    g = bcl.Gallery.create(tmp_path / "g", 8)
    g.add(old, model="old-m")
    a = bcl.adapters.fit("procrustes", old, new, old_model="old-m", new_model="new-m")
    ids, scores, verdict = g.search(new[:5], k=1, model="new-m", adapter=a)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4], "each new vector finds its own old vector"
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4) and "procrustes" in verdict
    with pytest.raises(bcl.BclError, match="fitted for the queries of new-m"):
        g.search(new[:5], k=1, model="other-m", adapter=a)
    ids, _, verdict = g.search(new[:5], k=1, model="other-m", adapter=a, force=True)
    assert verdict.startswith("FORCED")
    with pytest.raises(ValueError, match="query model"):
        g.search(new[:5], k=1, adapter=a)
    # slerp interpolates between both models' embeddings of each query: it needs the old ones
    s = bcl.adapters.fit(
        "slerp", old, new, labels=np.arange(64) % 4, old_model="old-m", new_model="new-m"
    )
    assert len(s.card["fit"]["recall_at_1"]) == 11
    with pytest.raises(ValueError, match="old model's embeddings"):
        g.search(new[:5], k=1, model="new-m", adapter=s)
    ids, _, _ = g.search(new[:5], k=1, model="new-m", adapter=s, old_queries=old[:5])
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_bad_adapter_input_is_refused(pair, tmp_path):
    old, new = pair
    with pytest.raises(ValueError, match="no adapter kind 'nope'"):
        bcl.adapters.fit("nope", old, new)
    with pytest.raises(ValueError, match="10 old vectors but 64 new ones"):
        bcl.adapters.fit("procrustes", old[:10], new)
    bad = new.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bcl.adapters.fit("procrustes", old, bad)
    with pytest.raises(ValueError, match="settings"):
        bcl.adapters.fit("affine", old, new, settings={"affine": {"nonsense": 1}})
    a = bcl.adapters.fit("procrustes", old, new)
    with pytest.raises(ValueError, match="dimension"):
        a.apply(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(FileNotFoundError):
        bcl.adapters.load(tmp_path / "nothing")
