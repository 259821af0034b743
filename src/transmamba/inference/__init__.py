"""transmamba.inference: the model-level decode cache, generation and sampling."""

from transmamba.inference.cache import ModelCache, cache_bytes_per_sequence
from transmamba.inference.generate import generate, release_decode_workspace
from transmamba.inference.sampling import filter_logits, sample_next, top_k_filter, top_p_filter

__all__ = [
    "ModelCache",
    "cache_bytes_per_sequence",
    "filter_logits",
    "generate",
    "release_decode_workspace",
    "sample_next",
    "top_k_filter",
    "top_p_filter",
]
