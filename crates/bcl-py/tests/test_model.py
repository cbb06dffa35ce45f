"""bcl.Model: a model trained by the CLI, loaded from Python, embeds raw images as the CLI's
evaluation does (unit-norm rows, deterministic, the card's dimension); bad input is refused."""

import json
import subprocess

import numpy as np
import pytest
import torch

import bcl
from test_splits import write_idx


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bcl_cli):
    root = tmp_path_factory.mktemp("model")
    exe = bcl_cli
    data = root / "data"
    data.mkdir()
    y = np.repeat(np.arange(4), 30)
    write_idx(data, y, np.repeat(np.arange(4), 5))
    cfg = root / "run.toml"
    cfg.write_text(
        f'[data]\ndir = "{data}"\nclasses = 4\n[model]\nwidth = 4\ndim = 8\n'
        "[old]\nepochs = 1\nbatch_size = 32\n"
    )
    out = root / "old"
    subprocess.run(
        [exe, "train-old", "--config", cfg, "--out", out, "--device", "cpu"],
        check=True,
        capture_output=True,
    )
    return out


def test_embeddings_are_unit_rows_of_the_cards_dimension(trained):
    m = bcl.Model(trained)
    assert m.card["role"] == "old" and m.dim == 8
    card = json.loads((trained / "model.json").read_text())
    assert m.card["id"] == card["id"]
    x = np.random.default_rng(0).integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    f = m.embed(x)
    assert f.shape == (10, 8) and f.dtype == torch.float32
    assert torch.allclose(f.norm(dim=1), torch.ones(10), atol=1e-5)
    # the same images as [N, 1, H, W] in other batch sizes: the same rows (float rounding aside)
    assert torch.allclose(f, m.embed(torch.from_numpy(x).unsqueeze(1), batch=3), atol=1e-6)
    # prototypes from a bcl model feed a loss directly
    protos = torch.stack([f[i::4].mean(0) for i in range(4)])
    loss = bcl.losses.BCTLoss(protos)(f.clone().requires_grad_(True), torch.arange(10) % 4)
    assert torch.isfinite(loss)


def test_bad_model_input_raises(trained, tmp_path):
    m = bcl.Model(trained)
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        m.embed(np.zeros((2, 9, 9), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        m.embed(np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(FileNotFoundError):
        bcl.Model(tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json")
    with pytest.raises(bcl.BclError, match="model.json"):
        bcl.Model(tmp_path / "broken")


def test_a_wider_new_model_reaches_the_old_space_through_its_head(trained, bcl_cli, tmp_path):
    out = tmp_path / "wide"
    subprocess.run(
        [bcl_cli, "train-new", "--old", trained, "--method", "bct", "--dim", "16",
         "--epochs", "1", "--out", out, "--device", "cpu"],
        check=True,
        capture_output=True,
    )
    m = bcl.Model(out)
    assert (m.dim, m.compat_dim) == (16, 8)
    assert bcl.Model(trained).compat_dim is None
    x = np.random.default_rng(1).integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    f = m.embed(x)
    assert f.shape == (6, 16)
    # the head by hand: P f / |P f| with P the stored weight [8, 16], read from the
    # safetensors file (an 8-byte header length, a JSON header, the raw little-endian data)
    raw = (out / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8 : 8 + n])["net.compat_head.weight"]
    assert meta["dtype"] == "F32" and meta["shape"] == [8, 16]
    a, b = meta["data_offsets"]
    p = torch.from_numpy(np.frombuffer(raw[8 + n + a : 8 + n + b], dtype="<f4").reshape(8, 16).copy())
    want = torch.nn.functional.normalize(f @ p.T, dim=1)
    assert torch.allclose(m.to_compat_space(f), want, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        m.to_compat_space(torch.zeros(2, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m.to_compat_space(np.zeros((2, 16)))
