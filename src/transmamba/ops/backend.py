"""The one switch between the Triton kernels and the plain PyTorch paths.

    use_triton(t)  ->  True when t is a CUDA tensor, the triton package is installed and the environment
                       variable TRANSMAMBA_DISABLE_TRITON is unset or empty (docs/environment.md)

Every op's dispatch asks this (and adds its own conditions, e.g. no fp64 or a supported width). Nothing
here imports triton or touches CUDA. Tests that run the kernels on CPU tensors under Triton's interpreter
replace this function (`monkeypatch.setattr(backend, "use_triton", ...)`), so callers look it up at call time
through the module: `backend.use_triton(x)`.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

__all__ = ["triton_available", "triton_disabled", "use_triton", "use_triton_inplace"]


@functools.cache
def triton_available() -> bool:
    """Whether the triton package can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_disabled() -> bool:
    """TRANSMAMBA_DISABLE_TRITON set to a non-empty value."""
    return bool(os.environ.get("TRANSMAMBA_DISABLE_TRITON"))


def use_triton(t: torch.Tensor) -> bool:
    """Run the Triton kernel for tensor `t`: a CUDA tensor, triton installed, not disabled."""
    return t.is_cuda and not triton_disabled() and triton_available()


def use_triton_inplace(t: torch.Tensor) -> bool:
    """`use_triton(t)` for the decode kernels that read or write `t` in place: also contiguous, not fp64."""
    return t.is_contiguous() and t.dtype != torch.float64 and use_triton(t)
