"""Triton row kernel of the chunked LM-head cross-entropy (`ops/cross_entropy.py`).

For each row r of a logits chunk x (c, V) (any float dtype, rows contiguous), with label y_r (a valid
index) and weight w_r (1 / counted tokens, or 0 for an ignored row):

    lse_r  = log Σ_v exp(x_rv)                       (fp32, online max / sum over blocks of V)
    loss_r = lse_r - x_{r, y_r}                      (fp32, written to `loss`)
    x_rv  <- w_r (exp(x_rv - lse_r) - [v == y_r])    (the gradient, written over the logits, in place)

Two passes over the row (the second re-reads it, mostly from L2) instead of the 8+ full-size passes of
`logits.float()`, logsumexp, exp, index-put and scaling in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["ce_rows_"]


@triton.jit
def _ce_rows_kernel(x_ptr, y_ptr, w_ptr, loss_ptr, V, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * stride
    offs = tl.arange(0, BLOCK)
    m = tl.full((BLOCK,), -1e30, tl.float32)
    s = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + offs
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
        m = m_new
    mx = tl.max(m, 0)
    lse = mx + tl.log(tl.sum(s * tl.exp(m - mx), 0))
    y = tl.load(y_ptr + row)
    w = tl.load(w_ptr + row)
    tgt = tl.load(base + y).to(tl.float32)
    tl.store(loss_ptr + row, lse - tgt)
    for start in range(0, V, BLOCK):
        cols = start + offs
        msk = cols < V
        x = tl.load(base + cols, mask=msk, other=0.0).to(tl.float32)
        g = tl.exp(x - lse) - tl.where(cols == y, 1.0, 0.0)
        tl.store(base + cols, (g * w).to(x_ptr.dtype.element_ty), mask=msk)


def ce_rows_(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """logits (c, V) (overwritten by the gradient), labels (c,) long in [0, V), weights (c,) fp32
    -> per-row loss lse - target logit (c,) fp32."""
    c, V = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("ce_rows_: logits rows must be contiguous")
    loss = torch.empty(c, device=logits.device, dtype=torch.float32)
    if c:
        block = min(4096, triton.next_power_of_2(V))
        _ce_rows_kernel[(c,)](logits, labels, weights.float().contiguous(), loss, V, logits.stride(0),
                              BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return loss
