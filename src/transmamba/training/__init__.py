"""transmamba.training: the trainer and its parts.

`config.TrainConfig` (every knob, YAML + CLI), `trainer.Trainer` (the loop), `checkpoint` (atomic saves,
exact resume), `optim` (AdamW + warmup/cosine), `metrics` (CSV, TensorBoard, plots, bits per byte),
`distributed` (DDP under torchrun).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "transmamba.training.config",
    "Trainer": "transmamba.training.trainer",
    "TrainResult": "transmamba.training.trainer",
    "TrainingError": "transmamba.training.trainer",
    "save_checkpoint": "transmamba.training.checkpoint",
    "load_checkpoint": "transmamba.training.checkpoint",
    "find_checkpoint": "transmamba.training.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'transmamba.training' has no attribute {name!r}")
