# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Triton: the Mamba-2 decode step between in_proj and out_proj in two launches, one program per (row, head).

Same math as `ops/ssm_decode/triton.py` (conv update, dt softplus, S_h = exp(dt A) S_h + dt x Bᵀ, y = S C + D x,
u = y · silu(z), grouped RMSNorm), split so that the SSM state — the step's traffic — is streamed by
b · H programs of one (headdim, d_state) tile each instead of b · G programs walking a group's heads:

    kernel 1, grid (b, H):  conv of the head's x channels (shifting their conv state in place), conv of its
                            group's B and C channels (read only: the group's other heads read the same taps),
                            state update in place, u = y · silu(z) -> scratch (fp32), Σ u² of the head -> scratch
    kernel 2, grid (b, G):  shift the conv state of the group's B and C channels, rstd from the group's heads'
                            Σ u², out = u · rstd · w; advances the row's seqlen_offset (g = 0)

Kernel 2 runs after every program of kernel 1, so no B / C tap is overwritten before all heads read it.
Needs what the one-launch kernel needs (norm groups = SSM groups, contiguous state, d_conv >= 2).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from transmamba.ops.ssm_decode.triton import _conv_silu
from transmamba.ops.triton.pdl import gdc_launch_dependents, gdc_wait, launch, pdl_enabled


@triton.jit
def _conv_silu_ro(XROW, CST, CW, CB, ch, m, s_c, s_k, W: tl.constexpr, BW: tl.constexpr, HAS_CB: tl.constexpr):
    """silu(conv) of channels ch for one row, rounded to the input dtype (as fp32); the state is not touched."""
    kk = tl.arange(0, BW)
    mk = m[:, None] & (kk[None, :] < W - 1)
    taps = tl.load(CST + ch[:, None] * s_c + kk[None, :] * s_k, mask=mk, other=0.0)
    w = tl.load(CW + ch[:, None] * W + kk[None, :], mask=mk, other=0.0).to(tl.float32)
    xv = tl.load(XROW + ch, mask=m, other=0.0)
    acc = tl.sum(w * taps.to(tl.float32), axis=1)
    if HAS_CB:
        acc += tl.load(CB + ch, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(CW + ch * W + W - 1, mask=m, other=0.0).to(tl.float32) * xv.to(tl.float32)
    acc = acc * tl.sigmoid(acc)
    return acc.to(xv.dtype).to(tl.float32)


@triton.jit
def _conv_shift(XROW, CST, ch, m, s_c, s_k, W: tl.constexpr, BW: tl.constexpr):
    """conv state <- [state[1:], x] for channels ch of one row (all taps read before the barrier)."""
    kk = tl.arange(0, BW)
    mk = m[:, None] & (kk[None, :] < W - 1)
    taps = tl.load(CST + ch[:, None] * s_c + kk[None, :] * s_k, mask=mk, other=0.0)
    xv = tl.load(XROW + ch, mask=m, other=0.0)
    tl.debug_barrier()
    tl.store(CST + ch[:, None] * s_c + (kk[None, :] - 1) * s_k, taps, mask=mk & (kk[None, :] >= 1))
    tl.store(CST + ch * s_c + (W - 2) * s_k, xv, mask=m)


@triton.jit
def _head_kernel(ZX, CST, CW, CB, S, A, DTB, DD, U, SQ,
                 s_zx, s_cb, s_cc, s_ck, d_inner, conv_dim, nheads, ngroups, headdim, dstate,
                 R: tl.constexpr, W: tl.constexpr, BW: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                 HAS_CB: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch: the previous kernel is complete past this point
        gdc_wait()
        gdc_launch_dependents()
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    g = h // R
    zrow = ZX + b * s_zx
    xrow = zrow + d_inner  # xBC starts after z
    cst = CST + b * s_cb
    offs_n = tl.arange(0, BN)
    mn = offs_n < dstate
    offs_p = tl.arange(0, BP)
    mp = offs_p < headdim
    so = S + (b * nheads + h) * headdim * dstate + offs_p[:, None] * dstate + offs_n[None, :]
    ms = mp[:, None] & mn[None, :]
    st = tl.load(so, mask=ms, other=0.0)  # (BP, BN): issued first, the conv work below overlaps it
    Bv = _conv_silu_ro(xrow, cst, CW, CB, d_inner + g * dstate + offs_n, mn, s_cc, s_ck, W, BW, HAS_CB)
    Cv = _conv_silu_ro(xrow, cst, CW, CB, d_inner + (ngroups + g) * dstate + offs_n, mn, s_cc, s_ck, W, BW, HAS_CB)
    cx = h * headdim + offs_p  # the head's channels in x, z and the output
    xv = _conv_silu(xrow, cst, CW, CB, cx, mp, s_cc, s_ck, W, BW, HAS_CB)  # shifts the head's own taps
    dt = tl.load(zrow + d_inner + conv_dim + h).to(tl.float32) + tl.load(DTB + h).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    decay = tl.exp(dt * tl.load(A + h).to(tl.float32))
    s_new = st.to(tl.float32) * decay + (dt * xv)[:, None] * Bv[None, :]
    tl.store(so, s_new.to(st.dtype), mask=ms)
    y = tl.sum(s_new * Cv[None, :], axis=1) + xv * tl.load(DD + h).to(tl.float32)
    z = tl.load(zrow + cx, mask=mp, other=0.0)
    y = y.to(z.dtype).to(tl.float32)  # the unfused step stores y in the inputs' dtype
    zf = z.to(tl.float32)
    u = tl.where(mp, y * (zf * tl.sigmoid(zf)), 0.0)
    tl.store(U + b * d_inner + cx, u, mask=mp)
    tl.store(SQ + b * nheads + h, tl.sum(u * u, axis=0))


@triton.jit
def _norm_kernel(ZX, CST, U, SQ, NW, OUT, SEQ, s_zx, s_cb, s_cc, s_ck, d_inner, nheads, ngroups, dstate, eps,
                 R: tl.constexpr, BR: tl.constexpr, P: tl.constexpr, BRP: tl.constexpr, BN: tl.constexpr,
                 W: tl.constexpr, BW: tl.constexpr, HAS_SEQ: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch: the previous kernel is complete past this point
        gdc_wait()
        gdc_launch_dependents()
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    xrow = ZX + b * s_zx + d_inner
    cst = CST + b * s_cb
    offs_n = tl.arange(0, BN)
    mn = offs_n < dstate
    _conv_shift(xrow, cst, d_inner + g * dstate + offs_n, mn, s_cc, s_ck, W, BW)
    _conv_shift(xrow, cst, d_inner + (ngroups + g) * dstate + offs_n, mn, s_cc, s_ck, W, BW)
    offs_r = tl.arange(0, BR)
    sq = tl.sum(tl.load(SQ + b * nheads + g * R + offs_r, mask=offs_r < R, other=0.0), axis=0)
    rstd = 1.0 / tl.sqrt(sq / (R * P) + eps)
    offs = tl.arange(0, BRP)
    mf = offs < R * P
    cx = g * R * P + offs  # the group's channels (its heads are contiguous)
    u = tl.load(U + b * d_inner + cx, mask=mf, other=0.0)
    w = tl.load(NW + cx, mask=mf, other=0.0).to(tl.float32)
    tl.store(OUT + b * d_inner + cx, (u * rstd * w).to(OUT.dtype.element_ty), mask=mf)
    if HAS_SEQ:
        if g == 0:  # the row's position moves on by one (one program per row writes it)
            tl.store(SEQ + b, tl.load(SEQ + b) + 1)


def mamba2_decode_split_triton(zxbcdt: torch.Tensor, conv_state: torch.Tensor, conv_weight: torch.Tensor,
                               conv_bias: torch.Tensor | None, ssm_state: torch.Tensor, A: torch.Tensor,
                               dt_bias: torch.Tensor, D: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                               ngroups: int, headdim: int, seqlen_offset: torch.Tensor | None = None,
                               num_warps: int = 4) -> torch.Tensor:
    """As `ops.ssm_decode.triton.mamba2_decode_triton` (same arguments and result; inputs checked there):
    zxbcdt (b, 2·d_inner + 2·G·N + H) -> (b, d_inner) in zxbcdt's dtype; conv_state, ssm_state (and
    seqlen_offset, if given) updated in place."""
    b = zxbcdt.shape[0]
    nheads, dstate = ssm_state.shape[1], ssm_state.shape[3]
    d_inner = nheads * headdim
    conv_dim, width = conv_weight.shape
    R = nheads // ngroups
    out = torch.empty(b, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    u = torch.empty(b, d_inner, device=zxbcdt.device, dtype=torch.float32)
    sq = torch.empty(b, nheads, device=zxbcdt.device, dtype=torch.float32)
    BN = max(16, triton.next_power_of_2(dstate))
    BW = max(2, triton.next_power_of_2(width - 1))
    cw = conv_weight.contiguous()
    pdl = pdl_enabled(zxbcdt)
    launch(
        _head_kernel, (b, nheads), zxbcdt, conv_state, cw, conv_bias if conv_bias is not None else cw, ssm_state, A, dt_bias, D, u, sq,
        zxbcdt.stride(0), *conv_state.stride(), d_inner, conv_dim, nheads, ngroups, headdim, dstate,
        R=R, W=width, BW=BW, BP=max(16, triton.next_power_of_2(headdim)), BN=BN,
        HAS_CB=conv_bias is not None, num_warps=num_warps, pdl=pdl,
    )
    launch(
        _norm_kernel, (b, ngroups), zxbcdt, conv_state, u, sq, norm_weight, out, seqlen_offset if seqlen_offset is not None else sq,
        zxbcdt.stride(0), *conv_state.stride(), d_inner, nheads, ngroups, dstate, float(eps),
        R=R, BR=triton.next_power_of_2(R), P=headdim, BRP=max(16, triton.next_power_of_2(R * headdim)), BN=BN,
        W=width, BW=BW, HAS_SEQ=seqlen_offset is not None, num_warps=4, pdl=pdl,
    )
    return out


__all__ = ["mamba2_decode_split_triton"]
