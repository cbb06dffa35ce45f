"""bcl: backward-compatible learning for retrieval, from the bcl Rust library.

``bcl.losses`` holds the compatibility losses as ``torch.nn.Module``s; ``bcl.metrics`` scores
embeddings (class-level retrieval, the Revisited Oxford/Paris protocol) exactly as ``bcl
metrics`` does; ``bcl.splits`` gives the CLI's seeded old/new splits; ``bcl.methods()`` and ``bcl.method_facts()`` read the method registry; ``bcl.Model`` loads a
trained ``bcl`` model and embeds images with it; ``bcl.Gallery`` opens or creates a gallery
(the project's HNSW engine, usearch or Milvus) with the CLI's lineage rules; ``bcl.adapters`` fits, applies, saves and
loads adapters between two models' spaces (``bcl adapt``). Inputs may be NumPy arrays or torch tensors. Errors: ``ValueError`` for inputs that do not fit,
``FileNotFoundError`` for a missing file, ``bcl.BclError`` for everything else the library
refuses, each with the reason.
"""

# torch first: the extension links libtorch, which torch's import loads into the process.
import torch  # noqa: F401

#: The torch release whose libtorch the extension is linked against (the wheel's metadata pins
#: it too); another release's libtorch has other symbols and another ABI.
TORCH_VERSION = "2.13.0"
if torch.__version__.split("+")[0] != TORCH_VERSION:
    raise ImportError(
        f"bcl was built against torch=={TORCH_VERSION} (its extension links that release's "
        f"libtorch), but torch {torch.__version__} is installed: "
        f"pip install torch=={TORCH_VERSION}, or build bcl against your torch"
    )

from . import adapters, losses, metrics, splits
from ._bcl import BclError, hnsw_kernel, method_facts, methods
from .model import Model
from .gallery import Gallery

__all__ = [
    "TORCH_VERSION",
    "BclError",
    "Gallery",
    "Model",
    "adapters",
    "hnsw_kernel",
    "losses",
    "method_facts",
    "methods",
    "metrics",
    "splits",
]
