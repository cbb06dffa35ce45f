"""Shared fixtures: the repository's golden files and the CLI binary."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def golden() -> Path:
    return ROOT / "testdata" / "golden"


@pytest.fixture(scope="session")
def bcl_cli() -> Path:
    exe = ROOT / "target" / "release" / "bcl"
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: run ./scripts/setup.sh first")
    return exe
