from typing import Optional, Sequence

import numpy as np

class BclError(Exception): ...

def retrieval(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: Optional[np.ndarray] = ...,
    gallery_labels: Optional[np.ndarray] = ...,
    ks: Sequence[int] = ...,
) -> dict: ...
def revisited(
    query: np.ndarray, gallery: np.ndarray, gnd_path: str, kappas: Sequence[int] = ...
) -> dict: ...
def split(
    labels: np.ndarray,
    scenario: str = ...,
    fraction: float = ...,
    seed: int = ...,
    classes: Optional[int] = ...,
) -> dict: ...
def methods() -> dict[str, str]: ...
