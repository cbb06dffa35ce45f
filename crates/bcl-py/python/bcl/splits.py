"""The seeded old/new splits of the update scenarios, identical to the CLI's ``split.json``."""

from __future__ import annotations

from typing import Any, Optional

from . import _bcl
from ._convert import labels as _labels

SCENARIOS = ("extended-data", "extended-class", "open-data", "open-class")


def split(
    labels: Any,
    scenario: str = "extended-data",
    fraction: float = 0.3,
    seed: int = 0,
    classes: Optional[int] = None,
) -> dict:
    """Splits a labelled training set into the old model's part and the new model's.

    Data scenarios give the old model ``fraction`` of each class's items; class scenarios
    ``fraction`` of the classes. Returns ``old_classes``, ``old_indices``, ``new_indices`` (item
    indices, ascending) and ``fingerprint`` (the CLI's, so a split can be checked against a run).
    ``classes`` defaults to the largest label plus one.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: expected one of {', '.join(SCENARIOS)}, got {scenario!r}")
    return _bcl.split(_labels("labels", labels), scenario, float(fraction), int(seed), classes)
