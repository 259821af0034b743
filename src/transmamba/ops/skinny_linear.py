"""A linear layer for the few rows of a decode step: y = x Wᵀ (+ b), dispatched to a weight-streaming kernel.

    y = skinny_linear(x, linear)     x (..., K), at most 64 rows in all; linear: nn.Linear(K, N) -> (..., N)

A decode step multiplies a handful of rows (the batch) by every weight matrix, so it is bound by reading
the weights; cuBLAS reaches only 40-66% of the copy bandwidth at these shapes on an H100
(docs/performance.md, Decode).

Dispatch: CUDA bf16 / fp16 inputs with at most `MAX_ROWS` rows, a weight with a contiguous last dim,
and `ops.backend.use_triton`: the Triton kernel (`ops/triton/skinny_gemm.py`, imported lazily). Everything
else: `linear(x)` (torch / cuBLAS). Inference only: the
kernel has no backward, so inputs that need a gradient go to torch as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.ops import backend

MAX_ROWS = 64  # the kernel's row tile is at most 64
DTYPES = (torch.bfloat16, torch.float16)  # the kernel's dtypes here (fp32 goes to nn.Linear)


def skinny_enabled(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `skinny_linear` sends (x, weight) to the Triton kernel (see the module docstring)."""
    rows = x.numel() // max(1, x.shape[-1])
    return (x.dtype in DTYPES and weight.dtype == x.dtype and 1 <= rows <= MAX_ROWS
            and weight.stride(-1) == 1 and not (torch.is_grad_enabled() and (x.requires_grad
                                                                               or weight.requires_grad))
            and backend.use_triton(x))


def skinny_linear(x: torch.Tensor, linear: nn.Linear, *, act: str | None = None,
                  reduce: bool = True) -> torch.Tensor:
    """act(linear(x)) for x (..., K) -> (..., N); act: None, "gelu" (F.gelu) or "relu2" (relu(·)²).
    Through the skinny-GEMM kernel where `skinny_enabled` (the activation then costs no launch of its own).
    reduce=False (2-D x, no bias, no act) lets the kernel return its fp32 split-K partial sums (S, M, N)
    unreduced when it splits K, for a consumer that adds them (`ops/norm/triton_add.py`); otherwise, and
    always on the torch path, the result is y (M, N)."""
    if x.shape[-1] != linear.in_features:
        raise ValueError(f"skinny_linear: x must have shape (..., {linear.in_features}), "
                         f"got {tuple(x.shape)}")
    if act not in (None, "gelu", "relu2"):
        raise ValueError(f"skinny_linear: act must be None, 'gelu' or 'relu2', got {act!r}")
    if not reduce and (x.dim() != 2 or act is not None or linear.bias is not None):
        raise ValueError("skinny_linear: reduce=False needs a 2-D x, no activation and a linear without bias")
    if not skinny_enabled(x, linear.weight):
        y = linear(x)
        if act == "gelu":
            return F.gelu(y)
        return F.relu(y).square() if act == "relu2" else y
    from transmamba.ops.triton.skinny_gemm import skinny_linear_triton

    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = skinny_linear_triton(x2, linear.weight, linear.bias, act=act, reduce=reduce)
    return y if y.dim() == 3 else y.reshape(*lead, linear.out_features)


__all__ = ["MAX_ROWS", "skinny_enabled", "skinny_linear"]
