"""Triton rotary position embedding (`ops.attention.apply_rope`'s rotate-half convention), fwd and bwd.

For a token at position p, channel pair (i, i + dh/2) of every head, θ_i = p · inv_freq_i:

    y_i = x_i cos θ_i - x_{i+h} sin θ_i,   y_{i+h} = x_{i+h} cos θ_i + x_i sin θ_i       (h = dh / 2)

The backward is the rotation by -θ (the transpose): the same kernel with sin negated. One program per
token handles all its heads; math in fp32, output in x's dtype (as the torch code). inv_freq is passed in,
computed by the caller exactly as the torch code does, so the angles are bit-identical.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["rope_triton"]


@triton.jit
def _rope_kernel(X, Y, POS, INV, H, DH, HALF, SIGN, BH: tl.constexpr, BD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # token index in (b * t)
    pos = tl.load(POS + row).to(tl.float32)
    i = tl.arange(0, BD)
    hh = tl.arange(0, BH)
    inv = tl.load(INV + i, mask=i < HALF, other=0.0)
    ang = pos * inv
    c = tl.cos(ang)[None, :]
    s = (tl.sin(ang) * SIGN)[None, :]
    offs = row * H * DH + hh[:, None] * DH + i[None, :]
    m = (hh[:, None] < H) & (i[None, :] < HALF)
    x1 = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(X + offs + HALF, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + offs, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=m)
    tl.store(Y + offs + HALF, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=m)


def _launch(x: torch.Tensor, pos: torch.Tensor, inv: torch.Tensor, sign: float) -> torch.Tensor:
    b, t, h, dh = x.shape
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel():
        _rope_kernel[(b * t,)](x, y, pos, inv, h, dh, dh // 2, sign, BH=triton.next_power_of_2(h),
                               BD=triton.next_power_of_2(dh // 2), num_warps=4)
    return y


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pos, inv):
        ctx.save_for_backward(pos, inv)
        return _launch(x, pos, inv, 1.0)

    @staticmethod
    def backward(ctx, dy):
        pos, inv = ctx.saved_tensors
        return _launch(dy, pos, inv, -1.0), None, None


def rope_triton(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x (b, t, h, dh), positions (b, t) (any int/float dtype), inv_freq (dh/2,) fp32 -> (b, t, h, dh)."""
    b, t = x.shape[:2]
    pos = positions.expand(b, t).reshape(-1).contiguous()
    return _Rope.apply(x, pos, inv_freq.contiguous())
