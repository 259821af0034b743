"""Peer ops for the `ssd-op` case: fla's chunked simple-GLA as an SSD, and SDPA causal attention.

SSD as scalar-decay linear attention. Mamba-2's SSD (without the D skip) is

    y_t = sum_{s <= t} (C_t . B_s) * exp(sum_{r=s+1}^{t} dt_r A) * dt_s * x_s

and fla's simple GLA (`fla.ops.simple_gla.chunk_simple_gla`, fla 0.6.0) computes, per head,

    o_t = scale * sum_{s <= t} (q_t . k_s) * exp(G_t - G_s) * v_s,   G_t = sum_{r <= t} g_r.

So q = C, k = dt * B, v = x, g = dt * A and scale = 1 give the same y (dt after bias and softplus; the
groups of B/C repeated over their heads, since fla has one q/k per value head). fla's layout is
(batch, time, heads, dim) like ours. Nothing here imports fla, triton or touches CUDA at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def load_fla() -> Callable[..., Any] | None:
    """fla's `chunk_simple_gla` (None, with the reason printed, when fla is absent or fails to import)."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as err:  # noqa: BLE001 - the peer is optional
        print(f"fla peer unavailable: {err!r}")
        return None
    return chunk_simple_gla


def ssd_as_simple_gla(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      dt_bias: torch.Tensor | None = None, dt_softplus: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SSD inputs -> fla simple-GLA inputs (q, k, v, g), see the module docstring.

    x (b, l, h, p), dt (b, l, h), A (h,), B/C (b, l, g, n) -> q, k (b, l, h, n) in x's dtype (contiguous),
    v = x, g (b, l, h) fp32 log-decay. k = dt * B is rounded to x's dtype (one rounding more than the SSD)."""
    b, l, h, p = x.shape
    g = B.shape[2]
    if h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    d = dt.float()
    if dt_bias is not None:
        d = d + dt_bias.float()
    if dt_softplus:
        d = F.softplus(d)
    rep = h // g
    q = C.repeat_interleave(rep, dim=2).to(x.dtype).contiguous()  # (b, l, h, n)
    k = (B.repeat_interleave(rep, dim=2).float() * d[..., None]).to(x.dtype).contiguous()  # (b, l, h, n)
    return q, k, x.contiguous(), (d * A.float()).contiguous()  # g: (b, l, h)


def sdpa_inputs(tokens: int, length: int, heads: int = 16, dim: int = 128, dtype=torch.bfloat16,
                device: str = "cuda") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v (batch, heads, length, dim), batch = tokens / length, for causal SDPA."""
    b = max(1, tokens // length)
    shape = (b, heads, length, dim)
    return tuple(torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))


def sdpa_causal_flops(batch: int, length: int, heads: int, dim: int) -> float:
    """Forward matmul FLOPs of causal attention: QK^T and PV over the causal half, 2 * 2 * b*h*L(L+1)/2*d."""
    return 4.0 * batch * heads * length * (length + 1) / 2 * dim
