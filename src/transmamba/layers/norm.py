"""Normalisation modules over `ops.norm`.

    RMSNorm(x)         = x / sqrt(mean(x²) + eps) · weight
    RMSNormGated(x, z) = RMSNorm(x · silu(z))        (norm_before_gate=False, Mamba-2's default)
                       = RMSNorm(x) · silu(z)        (norm_before_gate=True)

`group_size` normalises contiguous groups of that many channels separately. Both hold only `weight` (d,),
initialised to ones.

Decoding fuses the residual stream's adds with the next norm: `add_norm(h, delta, norm)` = (h + delta,
norm(h + delta)) and `embed_norm(embed, ids, norm)` = (embed(ids), norm(embed(ids))), each one launch on CUDA
(`ops/norm/triton_add.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from transmamba.ops import backend
from transmamba.ops.norm import gated_rms_norm, rms_norm


class RMSNorm(nn.Module):
    """RMSNorm over the last dim: x (..., d) -> (..., d)."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        if d <= 0:
            raise ValueError(f"RMSNorm: d must be positive, got {d}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(
                f"RMSNorm: x must have shape (..., {self.weight.shape[0]}), got {tuple(x.shape)}"
            )
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RMSNormGated(nn.Module):
    """Gated (grouped) RMSNorm: forward(x (..., d), z (..., d) or None) -> (..., d)."""

    def __init__(
        self,
        d: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if d <= 0:
            raise ValueError(f"RMSNormGated: d must be positive, got {d}")
        if group_size is not None and (group_size <= 0 or d % group_size):
            raise ValueError(f"RMSNormGated: group_size={group_size} must be a positive divisor of d={d}")
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(
                f"RMSNormGated: x must have shape (..., {self.weight.shape[0]}), got {tuple(x.shape)}"
            )
        return gated_rms_norm(x, z, self.weight, self.eps, self.group_size, self.norm_before_gate)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
            f"norm_before_gate={self.norm_before_gate}"
        )


def add_norm(h: torch.Tensor, delta: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + delta, norm(h + delta)) for one decode token per row: h (b, D); delta (b, D), or the fp32 split-K
    partial sums (S, b, D) of the linear that made it (`ops.skinny_linear` with reduce=False), summed here.
    One launch on CUDA (`ops/norm/triton_add.py`, for an RMSNorm), else the add and the module."""
    if delta.dim() == 3 or (backend.use_triton_inplace(h) and h.dtype == delta.dtype):
        from transmamba.ops.norm.triton_add import add_rms_norm_triton

        return add_rms_norm_triton(h, delta, norm.weight, norm.eps)
    h = h + delta
    return h, norm(h)


def embed_norm(embed: nn.Embedding, ids: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, norm(h)) with h = embed(ids), ids (b,) -> (b, D) twice: one launch on CUDA for a plain
    nn.Embedding and an RMSNorm (`ops/norm/triton_add.py`), else the two modules."""
    if (backend.use_triton_inplace(embed.weight) and type(norm) is RMSNorm and embed.padding_idx is None
            and embed.max_norm is None):
        from transmamba.ops.norm.triton_add import embed_rms_norm_triton

        return embed_rms_norm_triton(ids, embed.weight, norm.weight, norm.eps)
    h = embed(ids)
    return h, norm(h)
