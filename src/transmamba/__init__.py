"""transmamba: hybrid Transformer-Mamba models (TransMamba, Mamba-2-Hybrid, Jamba, Mambaformer).

Importing this package touches neither CUDA nor Triton; GPU kernels load lazily, on first use with CUDA
tensors.
Heavy submodules are imported on attribute access so that `import transmamba` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CausalLM": "transmamba.models.lm",
    "ModelConfig": "transmamba.models.config",
}


__all__ = ["CausalLM", "ModelConfig", "__version__"]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'transmamba' has no attribute {name!r}")
