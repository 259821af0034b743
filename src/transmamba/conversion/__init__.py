"""From a trained Transformer to TransMamba: weight conversion, distillation, and a TransPoint planner."""

from transmamba.conversion.to_transmamba import (
    ConversionError,
    convert_to_transmamba,
    kv_bytes_per_token,
    transmamba_config,
)

__all__ = ["ConversionError", "convert_to_transmamba", "kv_bytes_per_token", "transmamba_config"]
