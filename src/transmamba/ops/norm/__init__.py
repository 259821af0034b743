"""RMSNorm and the gated RMSNorm of Mamba-2.

    rms_norm(x) = x / sqrt(mean(x^2) + eps) * weight
    gated_rms_norm(x, z) = rms_norm(x * silu(z))            (norm_before_gate=False, Mamba-2's default)
                         = rms_norm(x) * silu(z)            (norm_before_gate=True)

With `group_size`, the mean is taken over contiguous groups of that many channels (Mamba-2 normalises each of
its `ngroups` groups separately). Computation is in fp32 and cast back to x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops import backend


def _triton_norm(x: torch.Tensor):
    """The Triton gated RMSNorm for CUDA tensors (imported lazily), or None to use the torch code below.
    TRANSMAMBA_DISABLE_TRITON=1 turns it off."""
    if not backend.use_triton(x):
        return None
    from transmamba.ops.norm.triton import gated_rms_norm_triton

    return gated_rms_norm_triton


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-5, group_size: int | None = None
) -> torch.Tensor:
    """x: (..., dim); weight: (dim,) or None. CUDA tensors use the Triton kernel (`ops/norm/triton.py`)."""
    fn = _triton_norm(x)
    if fn is not None and x.dtype != torch.float64:
        return fn(x, None, weight, eps, group_size)
    dim = x.shape[-1]
    xf = x.float()
    if group_size is not None and group_size != dim:
        if dim % group_size:
            raise ValueError(f"rms_norm: group_size={group_size} must divide the last dim {dim}")
        xg = xf.unflatten(-1, (dim // group_size, group_size))
        xf = (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)
    else:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        xf = xf * weight.float()
    return xf.to(x.dtype)


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor | None,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """x, z: (..., dim). z=None means no gate (plain RMSNorm). CUDA tensors use the Triton kernel."""
    fn = _triton_norm(x)
    if fn is not None and x.dtype != torch.float64:
        return fn(x, z, weight, eps, group_size, norm_before_gate)
    if z is None:
        return rms_norm(x, weight, eps, group_size)
    if z.shape != x.shape:
        raise ValueError(f"gated_rms_norm: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    gate = F.silu(z.float())
    if norm_before_gate:
        return (rms_norm(x, weight, eps, group_size).float() * gate).to(x.dtype)
    return rms_norm(x.float() * gate, weight, eps, group_size).to(x.dtype)
