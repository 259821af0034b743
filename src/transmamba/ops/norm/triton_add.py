"""Triton: residual add + RMSNorm of the next block in one launch (the static decode step's block seam).

    h' = h + d                       (rounded to h's dtype, as the unfused add stores it)
    n  = h' · rsqrt(mean(h'²) + eps) · w

One program per row; h' and n are returned. Same math as `h + d` followed by `ops.norm.rms_norm`.
d may also come as the fp32 split-K partial sums (S, rows, dim) of the linear that made it
(`ops/triton/skinny_gemm.py`, reduce=False): then d = Σ_s d[s] (in slice order), rounded to h's dtype as the
linear would have stored it, so the reduction costs no launch of its own.

`embed_rms_norm_triton` is the first seam: h = E[ids] (the embedding rows) and n = rms_norm(h) · w in one
launch (instead of an index-select and a norm kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_norm_kernel(H, D, W, HO, NO, dim, eps, S: tl.constexpr, BLOCK: tl.constexpr, PARTS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    rows = tl.num_programs(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < dim
    h = tl.load(H + row * dim + cols, mask=m, other=0.0)
    if PARTS:
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(S):  # unrolled: every partial's load is issued at once
            acc += tl.load(D + (s * rows + row) * dim + cols, mask=m, other=0.0)
        d = acc.to(h.dtype)
    else:
        d = tl.load(D + row * dim + cols, mask=m, other=0.0)
    s = (h.to(tl.float32) + d.to(tl.float32)).to(h.dtype)
    tl.store(HO + row * dim + cols, s, mask=m)
    u = s.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(u * u, axis=0) / dim + eps)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(NO + row * dim + cols, u * r * w, mask=m)


def add_rms_norm_triton(h: torch.Tensor, d: torch.Tensor, weight: torch.Tensor,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """h (rows, dim), d (rows, dim) or fp32 partials (S, rows, dim) -> (h + d, rms_norm(h + d) * weight),
    both in h's dtype."""
    h, d = h.contiguous(), d.contiguous()
    rows, dim = h.shape
    parts = d.dim() == 3
    if d.shape[-2:] != h.shape or (parts and d.dtype != torch.float32):
        raise ValueError(f"add_rms_norm_triton: d must have shape {tuple(h.shape)} or be fp32 (S, {rows}, "
                         f"{dim}) partials, got {tuple(d.shape)} {d.dtype}")
    h_out = torch.empty_like(h)
    n_out = torch.empty_like(h)
    _add_norm_kernel[(rows,)](h, d, weight, h_out, n_out, dim, float(eps),
                              S=d.shape[0] if parts else 1, BLOCK=triton.next_power_of_2(dim), PARTS=parts,
                              num_warps=8 if dim > 2048 else 4)
    return h_out, n_out


@triton.jit
def _embed_norm_kernel(IDS, E, W, HO, NO, vocab, dim, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    idx = tl.load(IDS + row).to(tl.int64)
    ok = (idx >= 0) & (idx < vocab)
    cols = tl.arange(0, BLOCK)
    m = cols < dim
    safe = tl.minimum(tl.maximum(idx, 0), vocab - 1)
    h = tl.load(E + safe * dim + cols, mask=m, other=0.0)
    h = tl.where(ok, h, tl.zeros_like(h))
    tl.store(HO + row * dim + cols, h, mask=m)
    u = h.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(u * u, axis=0) / dim + eps)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(NO + row * dim + cols, u * r * w, mask=m)


def embed_rms_norm_triton(ids: torch.Tensor, table: torch.Tensor, weight: torch.Tensor,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (rows,) int, table (V, dim) contiguous -> (h = table[ids], rms_norm(h) * weight), both in table's
    dtype. An id outside [0, V) gives a zero row (the device does no bounds error)."""
    if ids.dim() != 1 or table.dim() != 2 or not table.is_contiguous() or weight.shape != table.shape[1:]:
        raise ValueError(f"embed_rms_norm_triton: ids (rows,), a contiguous table (V, dim) and weight (dim,) "
                         f"needed, got {tuple(ids.shape)}, {tuple(table.shape)}, {tuple(weight.shape)}")
    ids = ids.contiguous()
    rows, (vocab, dim) = ids.shape[0], table.shape
    h_out = torch.empty(rows, dim, device=table.device, dtype=table.dtype)
    n_out = torch.empty_like(h_out)
    _embed_norm_kernel[(rows,)](ids, table, weight, h_out, n_out, vocab, dim, float(eps),
                                BLOCK=triton.next_power_of_2(dim), num_warps=8 if dim > 2048 else 4)
    return h_out, n_out
