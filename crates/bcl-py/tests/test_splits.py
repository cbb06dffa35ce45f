"""bcl.splits gives the CLI's split: same indices, same fingerprint (checked against the
split.json of a `bcl train-old` run on generated IDX files)."""

import gzip
import json
import struct
import subprocess

import numpy as np
import pytest

import bcl


def write_idx(dir_, labels_train, labels_test, side=8):
    rng = np.random.default_rng(0)
    for prefix, y in (("train", labels_train), ("t10k", labels_test)):
        n = len(y)
        pixels = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        images = struct.pack(">IIII", 0x803, n, side, side) + pixels.tobytes()
        labels = struct.pack(">II", 0x801, n) + np.asarray(y, dtype=np.uint8).tobytes()
        (dir_ / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (dir_ / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


@pytest.mark.parametrize(
    "scenario, fraction, seed",
    [("extended-data", 0.3, 5), ("extended-class", 0.5, 2)],
)
def test_split_equals_the_cli(tmp_path, bcl_cli, scenario, fraction, seed):
    y = np.repeat(np.arange(4), 30)
    np.random.default_rng(1).shuffle(y)
    data = tmp_path / "data"
    data.mkdir()
    write_idx(data, y, np.repeat(np.arange(4), 5))
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'[data]\ndir = "{data}"\nclasses = 4\n'
        "[model]\nwidth = 4\ndim = 8\n"
        "[old]\nepochs = 1\nbatch_size = 32\n"
        f'[split]\nscenario = "{scenario}"\nfraction = {fraction}\nseed = {seed}\n'
    )
    out = tmp_path / "old"
    subprocess.run(
        [bcl_cli, "train-old", "--config", cfg, "--out", out, "--device", "cpu"],
        check=True,
        capture_output=True,
    )
    cli = json.loads((out / "split.json").read_text())
    py = bcl.splits.split(y, scenario, fraction, seed, classes=4)
    for key in ("old_classes", "old_indices", "new_indices", "fingerprint"):
        assert py[key] == cli[key], key


def test_split_takes_torch_labels_and_is_seeded():
    import torch

    y = torch.arange(40) % 4
    a = bcl.splits.split(y, seed=3)
    b = bcl.splits.split(y.numpy(), seed=3)
    c = bcl.splits.split(y, seed=4)
    assert a == b and a["old_indices"] != c["old_indices"]
    # extended-data: the new model trains on every item, the old one on a share of each class
    assert a["new_indices"] == list(range(40))
    assert set(a["old_indices"]) < set(a["new_indices"]) and len(a["old_indices"]) == 12
