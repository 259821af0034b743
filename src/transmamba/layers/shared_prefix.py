"""A tensor used whole and through its first n positions, with the two gradients summed in place.

    (full, prefix) = share_prefix(t, n)      full = t, prefix = t[:, :n]      (views, no copy)
    dt = d_full;  dt[:, :n] += d_prefix

Autograd would instead turn the prefix's gradient into a zero-filled copy of t's full size and add that
to d_full (a fill, a copy and a full-size add). TransMamba's training path uses x, B and C this way: the
SSD reads all positions, attention the first P.
"""

from __future__ import annotations

import torch


class _SharePrefix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, n: int):
        ctx.n = n
        ctx.meta = (t.shape, t.dtype, t.device)
        return t.view_as(t), t[:, :n]

    @staticmethod
    def backward(ctx, d_full, d_prefix):
        shape, dtype, device = ctx.meta
        if d_full is None:
            grad = torch.zeros(shape, dtype=dtype, device=device)
        elif d_full.is_contiguous() and d_full._base is None:
            grad = d_full  # a fresh buffer from the consumer's backward: summed into in place
        else:
            grad = d_full.contiguous() if not d_full.is_contiguous() else d_full.clone()
        if d_prefix is not None:
            grad[:, : ctx.n] += d_prefix.to(grad.dtype)
        return grad, None


def share_prefix(t: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """t (b, l, ...) -> (t, t[:, :n]) with one gradient for t (see the module docstring); 0 < n <= l."""
    if t.dim() < 2 or not 0 < n <= t.shape[1]:
        raise ValueError(f"share_prefix: need t (b, l, ...) and 0 < n <= l, got {tuple(t.shape)}, n={n}")
    return _SharePrefix.apply(t, int(n))
