# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Triton RMSNorm / gated RMSNorm (Mamba-2's), forward and backward, per group of channels.

    norm_before_gate=False:  u = x * silu(z)  (u = x without z);  y = u * rsqrt(mean_g(u^2) + eps) * w
    norm_before_gate=True:   y = x * rsqrt(mean_g(x^2) + eps) * w * silu(z)

Backward with n = u * r (r = rsqrt(...)) and dn the gradient reaching n:
    du = r * (dn - n * mean_g(dn * n)),   dw = sum_rows(dy * n [* silu(z)])
    after-gate:  dn = dy * w,             dx = du * silu(z),   dz = du * x * silu'(z)
    before-gate: dn = dy * w * silu(z),   dx = du,             dz = dy * n * w * silu'(z)
silu'(z) = s (1 + z (1 - s)), s = sigmoid(z). One program handles ROWS rows of one group; the weight
gradient is summed per program and the partial sums (cdiv(rows, ROWS), dim) are added in torch.
Same arguments and results as `transmamba.ops.norm.gated_rms_norm` (fp32 math, output in x's dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS = 16


@triton.jit
def _fwd_kernel(X, Z, W, Y, RSTD, nrows, dim, group, eps,
                HAS_Z: tl.constexpr, HAS_W: tl.constexpr, BEFORE: tl.constexpr, ROWS: tl.constexpr,
                BLOCK: tl.constexpr):
    pr = tl.program_id(0)
    pg = tl.program_id(1)
    ngroups = dim // group
    cols = pg * group + tl.arange(0, BLOCK)
    mc = tl.arange(0, BLOCK) < group
    if HAS_W:
        w = tl.load(W + cols, mask=mc, other=0.0).to(tl.float32)
    for rr in range(0, ROWS):
        row = pr.to(tl.int64) * ROWS + rr  # 64-bit offsets for large inputs
        if row < nrows:
            x = tl.load(X + row * dim + cols, mask=mc, other=0.0).to(tl.float32)
            u = x
            if HAS_Z:
                z = tl.load(Z + row * dim + cols, mask=mc, other=0.0).to(tl.float32)
                gate = z * tl.sigmoid(z)
                if not BEFORE:
                    u = x * gate
            r = 1.0 / tl.sqrt(tl.sum(u * u, axis=0) / group + eps)
            y = u * r
            if HAS_W:
                y = y * w
            if HAS_Z:
                if BEFORE:
                    y = y * gate
            tl.store(Y + row * dim + cols, y, mask=mc)
            tl.store(RSTD + row * ngroups + pg, r)


@triton.jit
def _bwd_kernel(X, Z, W, DY, RSTD, DX, DZ, DW, nrows, dim, group,
                HAS_Z: tl.constexpr, HAS_W: tl.constexpr, BEFORE: tl.constexpr, ROWS: tl.constexpr,
                BLOCK: tl.constexpr):
    pr = tl.program_id(0)
    pg = tl.program_id(1)
    ngroups = dim // group
    cols = pg * group + tl.arange(0, BLOCK)
    mc = tl.arange(0, BLOCK) < group
    if HAS_W:
        w = tl.load(W + cols, mask=mc, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for rr in range(0, ROWS):
        row = pr.to(tl.int64) * ROWS + rr  # 64-bit offsets for large inputs
        if row < nrows:
            x = tl.load(X + row * dim + cols, mask=mc, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * dim + cols, mask=mc, other=0.0).to(tl.float32)
            r = tl.load(RSTD + row * ngroups + pg)
            u = x
            if HAS_Z:
                z = tl.load(Z + row * dim + cols, mask=mc, other=0.0).to(tl.float32)
                s = tl.sigmoid(z)
                gate = z * s
                dgate = s * (1.0 + z * (1.0 - s))
                if not BEFORE:
                    u = x * gate
            n = u * r
            dn = dy
            if HAS_W:
                dn = dn * w
            if HAS_Z:
                if BEFORE:
                    dw += dy * n * gate
                    dz = dn * n * dgate
                    dn = dn * gate
                else:
                    dw += dy * n
            else:
                dw += dy * n
            du = r * (dn - n * (tl.sum(dn * n, axis=0) / group))
            if HAS_Z:
                if BEFORE:
                    tl.store(DX + row * dim + cols, du, mask=mc)
                else:
                    tl.store(DX + row * dim + cols, du * gate, mask=mc)
                    dz = du * x * dgate
                tl.store(DZ + row * dim + cols, dz, mask=mc)
            else:
                tl.store(DX + row * dim + cols, du, mask=mc)
    tl.store(DW + pr.to(tl.int64) * dim + cols, dw, mask=mc)


class _GatedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, weight, eps, group, before):
        shape = x.shape
        dim = shape[-1]
        x2 = x.reshape(-1, dim).contiguous()
        z2 = z.reshape(-1, dim).contiguous() if z is not None else None
        rows = x2.shape[0]
        y = torch.empty_like(x2)
        rstd = torch.empty(rows, dim // group, device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(group)
        grid = (triton.cdiv(rows, ROWS), dim // group)
        _fwd_kernel[grid](x2, z2 if z2 is not None else x2, weight if weight is not None else x2, y, rstd,
                          rows, dim, group, eps, HAS_Z=z is not None, HAS_W=weight is not None,
                          BEFORE=bool(before), ROWS=ROWS, BLOCK=block, num_warps=4 if block <= 1024 else 8)
        ctx.save_for_backward(x2, z2, weight, rstd)
        ctx.meta = (shape, group, before)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, z2, weight, rstd = ctx.saved_tensors
        shape, group, before = ctx.meta
        dim = shape[-1]
        rows = x2.shape[0]
        dy2 = dy.reshape(-1, dim).contiguous()
        dx = torch.empty_like(x2)
        dz = torch.empty_like(z2) if z2 is not None else None
        nprog = triton.cdiv(rows, ROWS)
        dw = torch.empty(nprog, dim, device=x2.device, dtype=torch.float32)
        block = triton.next_power_of_2(group)
        _bwd_kernel[(nprog, dim // group)](
            x2, z2 if z2 is not None else x2, weight if weight is not None else x2, dy2, rstd, dx,
            dz if dz is not None else dx, dw, rows, dim, group,
            HAS_Z=z2 is not None, HAS_W=weight is not None, BEFORE=bool(before), ROWS=ROWS, BLOCK=block,
            num_warps=4 if block <= 1024 else 8)
        dwt = dw.sum(0).to(weight.dtype) if weight is not None else None
        return dx.view(shape), (dz.view(shape) if dz is not None else None), dwt, None, None, None


def gated_rms_norm_triton(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor | None,
                          eps: float = 1e-5, group_size: int | None = None,
                          norm_before_gate: bool = False) -> torch.Tensor:
    """See `transmamba.ops.norm.gated_rms_norm`; z=None is plain RMSNorm. Differentiable in x, z, weight."""
    dim = x.shape[-1]
    group = dim if group_size is None else int(group_size)
    if dim % group:
        raise ValueError(f"gated_rms_norm: group_size={group} must divide the last dim {dim}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"gated_rms_norm: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    return _GatedRMSNorm.apply(x, z, weight, float(eps), group, bool(norm_before_gate))
