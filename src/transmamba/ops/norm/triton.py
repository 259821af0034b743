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
def _fwd_kernel(X, Z, W, Y, RSTD, nrows, dim, group, eps, L, s_xb, s_xt, s_zb, s_zt,
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
            rb = row // L  # inputs: row = rb * L + rt of a (B, L, dim) view with any B / L strides
            rt = row % L
            x = tl.load(X + rb * s_xb + rt * s_xt + cols, mask=mc, other=0.0).to(tl.float32)
            u = x
            if HAS_Z:
                z = tl.load(Z + rb * s_zb + rt * s_zt + cols, mask=mc, other=0.0).to(tl.float32)
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
def _bwd_kernel(X, Z, W, DY, RSTD, DX, DZ, DW, nrows, dim, group, L, s_xb, s_xt, s_zb, s_zt, s_yb, s_yt,
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
            rb = row // L
            rt = row % L
            x = tl.load(X + rb * s_xb + rt * s_xt + cols, mask=mc, other=0.0).to(tl.float32)
            dy = tl.load(DY + rb * s_yb + rt * s_yt + cols, mask=mc, other=0.0).to(tl.float32)
            r = tl.load(RSTD + row * ngroups + pg)
            u = x
            if HAS_Z:
                z = tl.load(Z + rb * s_zb + rt * s_zt + cols, mask=mc, other=0.0).to(tl.float32)
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


def _as_rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., L, dim) -> a (B, L, dim) view with unit channel stride (any B / L strides: e.g. a slice of time
    steps, or a column slice of a wider buffer), copied only when no such view exists."""
    t3 = t.reshape(1, 1, dim) if t.dim() == 1 else t.reshape(-1, t.shape[-2], dim) if t.dim() > 2 else t[None]
    if t3.stride(-1) != 1:
        t3 = t3.contiguous()
    return t3


class _GatedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, weight, eps, group, before):
        shape = x.shape
        dim = shape[-1]
        x3 = _as_rows(x, dim)  # (B, L, dim): rows read in place, no copy of strided inputs
        z3 = _as_rows(z, dim) if z is not None else None
        if z3 is not None and z3.shape != x3.shape:
            z3 = z3.reshape(x3.shape).contiguous()
        L = x3.shape[1]
        rows = x3.shape[0] * L
        y = torch.empty(rows, dim, device=x.device, dtype=x.dtype)
        rstd = torch.empty(rows, dim // group, device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(group)
        grid = (triton.cdiv(rows, ROWS), dim // group)
        zs = (z3.stride(0), z3.stride(1)) if z3 is not None else (0, 0)
        _fwd_kernel[grid](x3, z3 if z3 is not None else x3, weight if weight is not None else x3, y, rstd,
                          rows, dim, group, eps, L, x3.stride(0), x3.stride(1), *zs, HAS_Z=z is not None,
                          HAS_W=weight is not None, BEFORE=bool(before), ROWS=ROWS, BLOCK=block,
                          num_warps=4 if block <= 1024 else 8)
        ctx.save_for_backward(x3, z3, weight, rstd)
        ctx.meta = (shape, group, before)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x3, z3, weight, rstd = ctx.saved_tensors
        shape, group, before = ctx.meta
        dim = shape[-1]
        L = x3.shape[1]
        rows = x3.shape[0] * L
        dy3 = _as_rows(dy, dim)
        if dy3.shape != x3.shape:
            dy3 = dy3.reshape(x3.shape).contiguous()
        dx = torch.empty(rows, dim, device=x3.device, dtype=x3.dtype)
        dz = torch.empty(rows, dim, device=z3.device, dtype=z3.dtype) if z3 is not None else None
        nprog = triton.cdiv(rows, ROWS)
        dw = torch.empty(nprog, dim, device=x3.device, dtype=torch.float32)
        block = triton.next_power_of_2(group)
        zs = (z3.stride(0), z3.stride(1)) if z3 is not None else (0, 0)
        _bwd_kernel[(nprog, dim // group)](
            x3, z3 if z3 is not None else x3, weight if weight is not None else x3, dy3, rstd, dx,
            dz if dz is not None else dx, dw, rows, dim, group, L, x3.stride(0), x3.stride(1), *zs,
            dy3.stride(0), dy3.stride(1),
            HAS_Z=z3 is not None, HAS_W=weight is not None, BEFORE=bool(before), ROWS=ROWS, BLOCK=block,
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
