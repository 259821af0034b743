"""transmamba.models: ModelConfig, layer patterns, TransPoint schedules, presets and CausalLM.

`CausalLM` is imported on first access (it pulls in every layer module).
"""

from __future__ import annotations

import importlib
from typing import Any

from transmamba.models.config import ModelConfig
from transmamba.models.presets import get_preset, list_presets, register_preset
from transmamba.models.schedules import resolve_schedule

__all__ = ["CausalLM", "CausalLMOutput", "ModelConfig", "get_preset", "list_presets", "register_preset",
           "resolve_schedule"]


def __getattr__(name: str) -> Any:
    if name in ("CausalLM", "CausalLMOutput"):
        return getattr(importlib.import_module("transmamba.models.lm"), name)
    raise AttributeError(f"module 'transmamba.models' has no attribute {name!r}")
