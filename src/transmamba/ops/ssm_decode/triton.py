# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Triton: the whole Mamba-2 decode step between in_proj and out_proj in one launch (the static decode step).

From one row of zxbcdt = in_proj(u) = [z (d_inner) | xBC (conv_dim) | dt (h)], per row b and group g
(its H/G heads, their x channels, the group's B and C channels):

    xBC'  = silu(bias + Σ_k w_k · [conv_state, xBC]_k)        conv_state <- [conv_state[1:], xBC] (in place)
    dt'   = softplus(dt + dt_bias)
    S_h   = exp(dt'_h A_h) S_h + dt'_h x_h Bᵀ                  (in place)
    y_h   = S_h C + D_h x_h
    u     = y · silu(z);  out = u · rsqrt(mean_group(u²) + eps) · norm_weight     (grouped gated RMSNorm)

It replaces ~10 launches of the unfused step (strided-input copies, conv update, state copy, SSD step,
gated RMSNorm). Intermediates are rounded to the inputs' dtype where the unfused step stores them (the conv
output and y), so the result matches it up to summation order. Needs: norm groups = SSM groups
(group_size = d_inner / ngroups, as `Mamba2` builds it), a contiguous SSM state (b, h, p, n), and d_conv >= 2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

KERNELS = ("head", "group")
DEFAULT_KERNEL = "group"  # fastest in situ on the H100 (docs/performance.md, Decode); "head" about equal
GROUP_TILE_MAX = 32768  # "group" only while a group's (heads, headdim, d_state) tile has at most this many
#                         elements (the 400M shape's 4 x 64 x 128); larger tiles would spill: "head" instead


@triton.jit
def _conv_silu(XROW, CST, CW, CB, ch, m, s_c, s_k, W: tl.constexpr, BW: tl.constexpr, HAS_CB: tl.constexpr):
    """Causal-conv update of channels ch (xBC indices) for one row: returns silu(conv) rounded to the input
    dtype (as fp32) and shifts the state in place. Threads may hold replicated copies of a channel, so every
    tap is loaded before a barrier and only then is the shifted state stored (else a fast replica could
    overwrite a tap a slow one has not read yet)."""
    kk = tl.arange(0, BW)
    mk = m[:, None] & (kk[None, :] < W - 1)
    taps = tl.load(CST + ch[:, None] * s_c + kk[None, :] * s_k, mask=mk, other=0.0)  # (C, BW) old state
    w = tl.load(CW + ch[:, None] * W + kk[None, :], mask=mk, other=0.0).to(tl.float32)
    xv = tl.load(XROW + ch, mask=m, other=0.0)
    acc = tl.sum(w * taps.to(tl.float32), axis=1)
    if HAS_CB:
        acc += tl.load(CB + ch, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(CW + ch * W + W - 1, mask=m, other=0.0).to(tl.float32) * xv.to(tl.float32)
    tl.debug_barrier()
    tl.store(CST + ch[:, None] * s_c + (kk[None, :] - 1) * s_k, taps, mask=mk & (kk[None, :] >= 1))
    tl.store(CST + ch * s_c + (W - 2) * s_k, xv, mask=m)
    acc = acc * tl.sigmoid(acc)
    return acc.to(xv.dtype).to(tl.float32)


@triton.jit
def _mamba2_decode_kernel(ZX, CST, CW, CB, S, A, DTB, DD, NW, OUT, SCR, SEQ,
                          s_zx, s_cb, s_cc, s_ck, d_inner, conv_dim, nheads, ngroups, headdim, dstate, eps,
                          R: tl.constexpr, W: tl.constexpr, BW: tl.constexpr, BP: tl.constexpr,
                          BN: tl.constexpr, HAS_CB: tl.constexpr, HAS_SEQ: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    zrow = ZX + b * s_zx
    xrow = zrow + d_inner  # xBC starts after z
    cst = CST + b * s_cb
    offs_n = tl.arange(0, BN)
    mn = offs_n < dstate
    offs_p = tl.arange(0, BP)
    mp = offs_p < headdim
    Bv = _conv_silu(xrow, cst, CW, CB, d_inner + g * dstate + offs_n, mn, s_cc, s_ck, W, BW, HAS_CB)
    Cv = _conv_silu(xrow, cst, CW, CB, d_inner + (ngroups + g) * dstate + offs_n, mn, s_cc, s_ck, W, BW, HAS_CB)
    sumsq = tl.zeros((BP,), dtype=tl.float32)
    for r in tl.static_range(R):
        h = g * R + r
        cx = h * headdim + offs_p  # channels of head h (in x, z and the output)
        xv = _conv_silu(xrow, cst, CW, CB, cx, mp, s_cc, s_ck, W, BW, HAS_CB)
        dt = tl.load(zrow + d_inner + conv_dim + h).to(tl.float32) + tl.load(DTB + h).to(tl.float32)
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
        decay = tl.exp(dt * tl.load(A + h).to(tl.float32))
        so = S + (b * nheads + h) * headdim * dstate + offs_p[:, None] * dstate + offs_n[None, :]
        ms = mp[:, None] & mn[None, :]
        st = tl.load(so, mask=ms, other=0.0)
        s_new = st.to(tl.float32) * decay + (dt * xv)[:, None] * Bv[None, :]
        tl.store(so, s_new.to(st.dtype), mask=ms)
        y = tl.sum(s_new * Cv[None, :], axis=1) + xv * tl.load(DD + h).to(tl.float32)
        z = tl.load(zrow + cx, mask=mp, other=0.0)
        y = y.to(z.dtype).to(tl.float32)  # the unfused step stores y in the inputs' dtype
        zf = z.to(tl.float32)
        u = y * (zf * tl.sigmoid(zf))
        sumsq += tl.where(mp, u * u, 0.0)
        tl.store(SCR + b * d_inner + cx, u, mask=mp)
    rstd = 1.0 / tl.sqrt(tl.sum(sumsq, axis=0) / (R * headdim) + eps)
    tl.debug_barrier()  # the scratch row was written by other threads of this program
    for r in tl.static_range(R):
        cx = (g * R + r) * headdim + offs_p
        u = tl.load(SCR + b * d_inner + cx, mask=mp, other=0.0)
        w = tl.load(NW + cx, mask=mp, other=0.0).to(tl.float32)
        tl.store(OUT + b * d_inner + cx, u * rstd * w, mask=mp)
    if HAS_SEQ:
        if g == 0:  # the row's position moves on by one (one program per row writes it)
            tl.store(SEQ + b, tl.load(SEQ + b) + 1)


@triton.jit
def _mamba2_decode_group_kernel(ZX, CST, CW, CB, S, A, DTB, DD, NW, OUT, SEQ,
                                s_zx, s_cb, s_cc, s_ck, d_inner, conv_dim, dstate, eps,
                                R: tl.constexpr, P: tl.constexpr, W: tl.constexpr, BW: tl.constexpr,
                                BR: tl.constexpr, BN: tl.constexpr, HAS_CB: tl.constexpr,
                                HAS_SEQ: tl.constexpr):
    """The same step with a group's R heads as one (BR, P, BN) tile (headdim P a power of 2): every state
    load of the program is issued at once (the state read is the step's traffic), and the group's RMSNorm
    needs no second pass."""
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    ngroups = tl.num_programs(1)
    zrow = ZX + b * s_zx
    xrow = zrow + d_inner  # xBC starts after z
    cst = CST + b * s_cb
    offs_n = tl.arange(0, BN)
    mn = offs_n < dstate
    offs_r = tl.arange(0, BR)
    mr = offs_r < R
    offs_p = tl.arange(0, P)
    h = g * R + offs_r  # (BR,) heads of the group
    ms = mr[:, None, None] & mn[None, None, :]  # (BR, 1, BN)
    so = S + ((b * (ngroups * R) + h[:, None, None]) * P + offs_p[None, :, None]) * dstate + offs_n[None, None, :]
    st = tl.load(so, mask=ms, other=0.0)  # (BR, P, BN): issued before the conv work below
    Bv = _conv_silu(xrow, cst, CW, CB, d_inner + g * dstate + offs_n, mn, s_cc, s_ck, W, BW, HAS_CB)
    Cv = _conv_silu(xrow, cst, CW, CB, d_inner + (ngroups + g) * dstate + offs_n, mn, s_cc, s_ck, W, BW, HAS_CB)
    offs_f = tl.arange(0, BR * P)  # the group's x channels, flat (head r, channel p) = r·P + p
    mf = offs_f < R * P
    xv = tl.reshape(_conv_silu(xrow, cst, CW, CB, g * R * P + offs_f, mf, s_cc, s_ck, W, BW, HAS_CB), (BR, P))
    dt = tl.load(zrow + d_inner + conv_dim + h, mask=mr, other=0.0).to(tl.float32) + tl.load(DTB + h, mask=mr, other=0.0).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    decay = tl.exp(dt * tl.load(A + h, mask=mr, other=0.0).to(tl.float32))  # (BR,)
    s_new = st.to(tl.float32) * decay[:, None, None] + (dt[:, None] * xv)[:, :, None] * Bv[None, None, :]
    tl.store(so, s_new.to(st.dtype), mask=ms)
    y = tl.sum(s_new * Cv[None, None, :], axis=2) + xv * tl.load(DD + h, mask=mr, other=0.0).to(tl.float32)[:, None]
    cx = g * R * P + offs_r[:, None] * P + offs_p[None, :]  # (BR, P) channels in x, z and the output
    m2 = mr[:, None]
    z = tl.load(zrow + cx, mask=m2, other=0.0)
    y = y.to(z.dtype).to(tl.float32)  # the unfused step stores y in the inputs' dtype
    zf = z.to(tl.float32)
    u = tl.where(m2, y * (zf * tl.sigmoid(zf)), 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(u * u, axis=1), axis=0) / (R * P) + eps)
    w = tl.load(NW + cx, mask=m2, other=0.0).to(tl.float32)
    tl.store(OUT + b * d_inner + cx, (u * rstd * w).to(OUT.dtype.element_ty), mask=m2)
    if HAS_SEQ:
        if g == 0:  # the row's position moves on by one (one program per row writes it)
            tl.store(SEQ + b, tl.load(SEQ + b) + 1)


def mamba2_decode_triton(zxbcdt: torch.Tensor, conv_state: torch.Tensor, conv_weight: torch.Tensor,
                         conv_bias: torch.Tensor | None, ssm_state: torch.Tensor, A: torch.Tensor,
                         dt_bias: torch.Tensor, D: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                         ngroups: int, headdim: int, *, kernel: str | None = None,
                         num_warps: int | None = None, seqlen_offset: torch.Tensor | None = None) -> torch.Tensor:
    """zxbcdt (b, 2·d_inner + 2·G·N + H) with a contiguous last dim; conv_state (b, conv_dim, W-1) any
    strides; conv_weight (conv_dim, W); ssm_state (b, H, P, N) contiguous; A, dt_bias, D (H,); norm_weight
    (d_inner,). Updates conv_state and ssm_state in place; returns the normalised gated y (b, d_inner) in
    zxbcdt's dtype, ready for out_proj. kernel (default DEFAULT_KERNEL): "group" = one program per
    (row, group) with one (heads, headdim, d_state) tile (headdim a power of 2 >= 16 and the tile at most
    GROUP_TILE_MAX elements, else "head"); "head" = one program per (row, group) walking the group's heads
    in turn. num_warps overrides the launch's (for benchmarks).
    seqlen_offset (b,) int, if given, is incremented in place (the layer state's position; saves a launch)."""
    b = zxbcdt.shape[0]
    nheads, dstate = ssm_state.shape[1], ssm_state.shape[3]
    d_inner = nheads * headdim
    conv_dim, width = conv_weight.shape
    if zxbcdt.stride(-1) != 1 or not ssm_state.is_contiguous() or width < 2 or D.dim() != 1:
        raise ValueError("mamba2_decode_triton: needs a contiguous last dim of zxbcdt, a contiguous "
                         "ssm_state, d_conv >= 2 and D of shape (nheads,)")
    out = torch.empty(b, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    BN = max(16, triton.next_power_of_2(dstate))
    BW = max(2, triton.next_power_of_2(width - 1))
    R = nheads // ngroups
    conv_b = conv_bias if conv_bias is not None else conv_weight
    has_seq = seqlen_offset is not None
    if has_seq and (seqlen_offset.shape != (b,) or not seqlen_offset.is_contiguous()):
        raise ValueError(f"mamba2_decode_triton: seqlen_offset must be a contiguous ({b},) tensor")
    seq = seqlen_offset if has_seq else out
    kernel = kernel or DEFAULT_KERNEL
    if kernel not in KERNELS:
        raise ValueError(f"mamba2_decode_triton: kernel must be one of {KERNELS}, got {kernel!r}")
    BR = triton.next_power_of_2(R)
    if (kernel == "group" and headdim == triton.next_power_of_2(headdim) and headdim >= 16
            and BR * headdim * BN <= GROUP_TILE_MAX):
        warps = num_warps or (16 if BR * headdim * BN >= 16384 else 4)
        _mamba2_decode_group_kernel[(b, ngroups)](
            zxbcdt, conv_state, conv_weight.contiguous(), conv_b, ssm_state, A, dt_bias, D, norm_weight, out, seq,
            zxbcdt.stride(0), *conv_state.stride(), d_inner, conv_dim, dstate, float(eps),
            R=R, P=headdim, W=width, BW=BW, BR=BR, BN=BN, HAS_CB=conv_bias is not None, HAS_SEQ=has_seq,
            num_warps=warps,
        )
        return out
    scratch = torch.empty(b, d_inner, device=zxbcdt.device, dtype=torch.float32)
    BP = max(16, triton.next_power_of_2(headdim))
    _mamba2_decode_kernel[(b, ngroups)](
        zxbcdt, conv_state, conv_weight.contiguous(), conv_b, ssm_state, A, dt_bias, D, norm_weight, out, scratch,
        seq, zxbcdt.stride(0), *conv_state.stride(), d_inner, conv_dim, nheads, ngroups, headdim, dstate,
        float(eps), R=R, W=width, BW=BW, BP=BP, BN=BN, HAS_CB=conv_bias is not None, HAS_SEQ=has_seq,
        num_warps=num_warps or 4,
    )
    return out
