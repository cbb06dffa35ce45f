from typing import Any, Optional, Sequence

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
def method_facts() -> dict[str, dict[str, Any]]: ...
def hnsw_kernel() -> str: ...

import torch

class CompatLossCore:
    method: str
    weight: float
    needs_old_embeddings: bool
    def __init__(
        self,
        method: str,
        settings: str,
        prototypes: Optional[torch.Tensor] = ...,
        old_bank: Optional[torch.Tensor] = ...,
        old_bank_labels: Optional[torch.Tensor] = ...,
    ) -> None: ...
    def forward(
        self,
        new: torch.Tensor,
        labels: torch.Tensor,
        old: Optional[torch.Tensor] = ...,
        classifier: Optional[torch.Tensor] = ...,
        progress: float = ...,
    ) -> Optional[torch.Tensor]: ...
    def refresh_due(self, epoch: int, batch: int, step: int) -> Optional[int]: ...
    def refresh(
        self, bank: torch.Tensor, labels: torch.Tensor, epoch: int = ..., step: int = ...
    ) -> Optional[str]: ...
    def observe(self, new: torch.Tensor, labels: torch.Tensor) -> None: ...
    def state(self) -> list[tuple[str, torch.Tensor]]: ...
    def load_state(self, state: list[tuple[str, torch.Tensor]]) -> None: ...
    def parameters(self) -> list[tuple[str, torch.Tensor]]: ...

class ModelCore:
    def __init__(self, path: str) -> None: ...
    def card(self) -> str: ...
    def embed(self, pixels: np.ndarray, batch: int = ...) -> torch.Tensor: ...
    def to_compat_space(self, embeddings: torch.Tensor) -> torch.Tensor: ...

class GalleryCore:
    dim: int
    backend: str
    @staticmethod
    def open(path: str) -> "GalleryCore": ...
    @staticmethod
    def create(
        path: str,
        dim: int,
        backend: str = ...,
        milvus_uri: Optional[str] = ...,
        milvus_collection: Optional[str] = ...,
    ) -> "GalleryCore": ...
    def __len__(self) -> int: ...
    def set_search_expansion(self, ef: int) -> None: ...
    def counts(self) -> dict[str, int]: ...
    def manifest(self) -> str: ...
    def add(
        self,
        vectors: np.ndarray,
        model: Optional[str] = ...,
        card: Optional[str] = ...,
        first_id: Optional[int] = ...,
        force: bool = ...,
    ) -> tuple[int, int, str]: ...
    def search(
        self,
        queries: np.ndarray,
        k: int = ...,
        model: Optional[str] = ...,
        card: Optional[str] = ...,
        exact: bool = ...,
        force: bool = ...,
    ) -> tuple[np.ndarray, np.ndarray, Optional[str]]: ...
    def search_adapted(
        self,
        queries: torch.Tensor,
        adapter: "AdapterCore",
        k: int = ...,
        model: Optional[str] = ...,
        card: Optional[str] = ...,
        companion: Optional[torch.Tensor] = ...,
        exact: bool = ...,
        force: bool = ...,
    ) -> tuple[np.ndarray, np.ndarray, str]: ...
    def status(self) -> dict: ...

class AdapterCore:
    @staticmethod
    def fit(
        kind: str,
        old: torch.Tensor,
        new: torch.Tensor,
        labels: Optional[list[int]] = ...,
        side_info: Optional[torch.Tensor] = ...,
        settings: Optional[str] = ...,
        seed: Optional[int] = ...,
        alpha: Optional[float] = ...,
        old_card: Optional[str] = ...,
        old_name: Optional[str] = ...,
        new_card: Optional[str] = ...,
        new_name: Optional[str] = ...,
    ) -> "AdapterCore": ...
    @staticmethod
    def load(path: str) -> "AdapterCore": ...
    def save(self, path: str) -> None: ...
    def card(self) -> str: ...
    def apply(self, x: torch.Tensor, companion: Optional[torch.Tensor] = ...) -> torch.Tensor: ...

def adapter_kinds() -> list[tuple[str, str, str]]: ...

def compatibility_matrix(names: list[str], features: list[np.ndarray], labels: np.ndarray) -> dict: ...
def backfill_curve(
    old: np.ndarray, new: np.ndarray, labels: np.ndarray, fractions: Sequence[float] = ..., seed: int = ...
) -> list[tuple[float, float]]: ...
def flips(
    old_query: np.ndarray, old_gallery: np.ndarray, new_query: np.ndarray, new_gallery: np.ndarray, labels: np.ndarray
) -> dict: ...
def criterion(cross: float, old_old: float, indep: Optional[float] = ...) -> tuple[bool, Optional[float]]: ...
