"""Triton: residual add + RMSNorm of the next block in one launch (the static decode step's block seam).

    h' = h + d                       (rounded to h's dtype, as the unfused add stores it)
    n  = h' · rsqrt(mean(h'²) + eps) · w

One program per row; h' and n are returned. Same math as `h + d` followed by `ops.norm.rms_norm`.
d may also come as the fp32 split-K partial sums (S, rows, dim) of the linear that made it
(`ops/triton/skinny_gemm.py`, reduce=False): then d = Σ_s d[s] (in slice order), rounded to h's dtype as the
linear would have stored it, so the reduction costs no launch of its own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from transmamba.ops.triton.pdl import gdc_launch_dependents, gdc_wait, launch, pdl_enabled


@triton.jit
def _add_norm_kernel(H, D, W, HO, NO, dim, eps, S: tl.constexpr, BLOCK: tl.constexpr, PARTS: tl.constexpr,
                     PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch: the previous kernel is complete past this point
        gdc_wait()
        gdc_launch_dependents()
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
    launch(_add_norm_kernel, (rows,), h, d, weight, h_out, n_out, dim, float(eps), pdl=pdl_enabled(h),
           S=d.shape[0] if parts else 1, BLOCK=triton.next_power_of_2(dim), PARTS=parts,
           num_warps=8 if dim > 2048 else 4)
    return h_out, n_out
