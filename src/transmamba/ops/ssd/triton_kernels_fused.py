# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Fused Triton kernels of the chunked SSD (the second-generation path; launchers in `ssd.py`, notation and
formulas in `ssd_kernels.py`).

    state_fwd_fused_kernel   chunk states + state passing in one sequential walk per (b, h, p-block, n-block):
                             S_{c+1} = exp(a_last,c) S_c + sum_j exp(a_last - a_j) dt_j x_j B_jᵀ, S_c stored
                             (the fp32 per-chunk own states are never written)
    state_bwd_fused_kernel   u_c + the reverse state pass in one walk: G_c = exp(a_last,c) G_{c+1} + u_c with
                             u_c = sum_i exp(a_i) dy_i C_iᵀ; ds_c = G_{c+1} stored; dA_last += exp(a_last) <G_{c+1}, S_c>
    ddt_finalize_kernel      the (b, h, L) tail of the backward: rcs = reverse-cumsum(dda) + dda_in + cumsum(diff)
                             per chunk, ddt = (ddt_part + A rcs) [* sigmoid(dt + bias)], dA += dt_eff rcs,
                             d_bias += ddt; written as (b, l, h) in dt's dtype

Both state walks run one flat loop over (chunk, token block) so that the loads of the next chunk are
pipelined behind the current one; the state sits in registers (fp32) for the whole sequence.
"""

from __future__ import annotations

import triton
import triton.language as tl

from transmamba.ops.ssd.triton_kernels import _dot


@triton.jit
def state_fwd_fused_kernel(
    X, BM, DT, DA, INIT, SEQ, PREV, FINAL,
    seqlen, nheads, ngroups, headdim, dstate,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_seq_b, s_seq_l,
    HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, STORE: tl.constexpr, IEEE: tl.constexpr,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """PREV[b, c, h] = S_c (state entering chunk c, PREV's dtype) if STORE; FINAL[b, h] = S_nc (fp32).
    Documents: S_c survives chunk c only if the chunk ends in the document of token c*Q - 1 (token 0 for
    c = 0); a chunk's tokens add to the state only if they belong to its last document.
    Grid (b * h, cdiv(p, BP) * cdiv(n, BN)); PREV (b, c, h, p, n), INIT/FINAL (b, h, p, n) contiguous."""
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_pn = tl.program_id(1)
    h = pid_bh % nheads
    b = pid_bh // nheads
    g = h // (nheads // ngroups)
    npb = tl.cdiv(dstate, BN)
    offs_p = (pid_pn // npb) * BP + tl.arange(0, BP)
    offs_n = (pid_pn % npb) * BN + tl.arange(0, BN)
    mp = offs_p < headdim
    mn = offs_n < dstate
    so = offs_p[:, None] * dstate + offs_n[None, :]
    ms = mp[:, None] & mn[None, :]
    size = headdim * dstate
    if HAS_INIT:
        acc = tl.load(INIT + pid_bh * size + so, mask=ms, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros((BP, BN), dtype=tl.float32)
    nchunks = tl.cdiv(seqlen, Q)
    NK: tl.constexpr = Q // BK
    xb = X + b * s_x_b + h * s_x_h
    bb = BM + b * s_b_b + g * s_b_g
    for it in range(0, nchunks * NK):
        c = it // NK
        t0 = c * Q
        da_base = ((b * nheads + h) * nchunks + c) * Q
        a_last = tl.load(DA + da_base + Q - 1)
        if HAS_SEQ:
            seq_last = tl.load(SEQ + b * s_seq_b + (tl.minimum(t0 + Q, seqlen) - 1) * s_seq_l)
        if it % NK == 0:
            if STORE:
                tl.store(PREV + ((b * nchunks + c) * nheads + h) * size + so, acc.to(PREV.dtype.element_ty), mask=ms)
            scale = tl.exp(a_last)
            if HAS_SEQ:
                seq_prev = tl.load(SEQ + b * s_seq_b + tl.maximum(t0 - 1, 0) * s_seq_l)
                scale = tl.where(seq_last == seq_prev, scale, 0.0)
            acc = acc * scale
        offs_k = (it % NK) * BK + tl.arange(0, BK)
        t = t0 + offs_k
        mt = t < seqlen
        xt = tl.load(xb + t[None, :] * s_x_l + offs_p[:, None] * s_x_p, mask=mt[None, :] & mp[:, None], other=0.0)  # (BP, BK)
        bt = tl.load(bb + t[:, None] * s_b_l + offs_n[None, :] * s_b_n, mask=mt[:, None] & mn[None, :], other=0.0)  # (BK, BN)
        w = tl.exp(a_last - tl.load(DA + da_base + offs_k)) * tl.load(DT + da_base + offs_k)
        if HAS_SEQ:
            sq = tl.load(SEQ + b * s_seq_b + t * s_seq_l, mask=mt, other=-1)
            w = tl.where(sq == seq_last, w, 0.0)
        w = tl.where(mt, w, 0.0)
        acc += _dot(xt, (bt.to(tl.float32) * w[:, None]).to(X.dtype.element_ty), IEEE)
    tl.store(FINAL + pid_bh * size + so, acc, mask=ms)


@triton.jit
def state_bwd_fused_kernel(
    DY, CM, DA, GIN, SEQ, PREV, DS, DINIT, DDA,
    seqlen, nheads, ngroups, headdim, dstate,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_seq_b, s_seq_l,
    HAS_GIN: tl.constexpr, HAS_SEQ: tl.constexpr, IEEE: tl.constexpr,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Reverse walk over the chunks: DS[b, c, h] = G_{c+1} (DS's dtype), G_c = exp(a_last,c) G_{c+1} + u_c,
    u_c = sum_i exp(a_i) dy_i C_iᵀ over the tokens of the incoming state's document (that of token c*Q - 1,
    or token 0); DINIT = G_0 (fp32); DDA[b, h, c, Q-1] += exp(a_last,c) <G_{c+1}, S_c> (S_c = PREV, atomics
    over the p/n blocks). GIN = dL/dfinal (if HAS_GIN). Grid (b * h, cdiv(p, BP) * cdiv(n, BN))."""
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_pn = tl.program_id(1)
    h = pid_bh % nheads
    b = pid_bh // nheads
    g = h // (nheads // ngroups)
    npb = tl.cdiv(dstate, BN)
    offs_p = (pid_pn // npb) * BP + tl.arange(0, BP)
    offs_n = (pid_pn % npb) * BN + tl.arange(0, BN)
    mp = offs_p < headdim
    mn = offs_n < dstate
    so = offs_p[:, None] * dstate + offs_n[None, :]
    ms = mp[:, None] & mn[None, :]
    size = headdim * dstate
    if HAS_GIN:
        acc = tl.load(GIN + pid_bh * size + so, mask=ms, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros((BP, BN), dtype=tl.float32)
    nchunks = tl.cdiv(seqlen, Q)
    NK: tl.constexpr = Q // BK
    yb = DY + b * s_x_b + h * s_x_h
    cb = CM + b * s_b_b + g * s_b_g
    for it in range(0, nchunks * NK):
        c = nchunks - 1 - it // NK
        t0 = c * Q
        da_base = ((b * nheads + h) * nchunks + c) * Q
        if HAS_SEQ:
            seq_prev = tl.load(SEQ + b * s_seq_b + tl.maximum(t0 - 1, 0) * s_seq_l)
        if it % NK == 0:
            st = ((b * nchunks + c) * nheads + h) * size + so
            tl.store(DS + st, acc.to(DS.dtype.element_ty), mask=ms)
            scale = tl.exp(tl.load(DA + da_base + Q - 1))
            if HAS_SEQ:
                seq_last = tl.load(SEQ + b * s_seq_b + (tl.minimum(t0 + Q, seqlen) - 1) * s_seq_l)
                scale = tl.where(seq_last == seq_prev, scale, 0.0)
            sp = tl.load(PREV + st, mask=ms, other=0.0).to(tl.float32)
            tl.atomic_add(DDA + da_base + Q - 1, scale * tl.sum(tl.sum(acc * sp, axis=1), axis=0))
            acc = acc * scale
        offs_k = (it % NK) * BK + tl.arange(0, BK)
        t = t0 + offs_k
        mt = t < seqlen
        dyt = tl.load(yb + t[None, :] * s_x_l + offs_p[:, None] * s_x_p, mask=mt[None, :] & mp[:, None], other=0.0)  # (BP, BK)
        ct = tl.load(cb + t[:, None] * s_b_l + offs_n[None, :] * s_b_n, mask=mt[:, None] & mn[None, :], other=0.0)  # (BK, BN)
        w = tl.exp(tl.load(DA + da_base + offs_k))
        if HAS_SEQ:
            sq = tl.load(SEQ + b * s_seq_b + t * s_seq_l, mask=mt, other=-1)
            w = tl.where(sq == seq_prev, w, 0.0)
        w = tl.where(mt, w, 0.0)
        acc += _dot(dyt, (ct.to(tl.float32) * w[:, None]).to(DY.dtype.element_ty), IEEE)
    tl.store(DINIT + pid_bh * size + so, acc, mask=ms)


@triton.jit
def ddt_finalize_kernel(
    DDA, DDA_IN, DIFF, DDT, DTE, A, DT, BIAS, DT_OUT, DA_OUT, DBIAS_OUT,
    seqlen, nheads,
    s_dt_b, s_dt_l, s_dt_h,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, Q: tl.constexpr, BH: tl.constexpr,
):
    """Per chunk and head block: rcs_k = sum_{i>=k} DDA_i + DDA_IN_k + sum_{i<=k} DIFF_i (the gradient w.r.t.
    the step log decay dt_k A), ddt_eff = DDT + A rcs, DT_OUT[b, t, h] = ddt_eff * sigmoid(dt + bias) with
    SOFTPLUS (else ddt_eff); DA_OUT[h] += sum dt_eff rcs, DBIAS_OUT[h] += sum DT_OUT (fp32, atomics).
    (b, h, c, Q) fp32 inputs; grid (b, nchunks, cdiv(h, BH))."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    pid_h = tl.program_id(2)
    nchunks = tl.num_programs(1)
    offs_h = pid_h * BH + tl.arange(0, BH)
    mh = offs_h < nheads
    offs_t = pid_c * Q + tl.arange(0, Q)
    mask = mh[:, None] & (offs_t[None, :] < seqlen)
    idx = ((pid_b * nheads + offs_h[:, None]) * nchunks + pid_c) * Q + tl.arange(0, Q)[None, :]
    dda = tl.load(DDA + idx, mask=mh[:, None], other=0.0)
    rcs = tl.cumsum(dda, axis=1, reverse=True) + tl.load(DDA_IN + idx, mask=mh[:, None], other=0.0)
    rcs += tl.cumsum(tl.load(DIFF + idx, mask=mh[:, None], other=0.0), axis=1)
    a = tl.load(A + offs_h, mask=mh, other=0.0).to(tl.float32)
    ddt = tl.load(DDT + idx, mask=mh[:, None], other=0.0) + a[:, None] * rcs
    dte = tl.load(DTE + idx, mask=mh[:, None], other=0.0)
    tl.atomic_add(DA_OUT + offs_h, tl.sum(tl.where(mask, dte * rcs, 0.0), axis=1), mask=mh)
    if SOFTPLUS:
        off = pid_b * s_dt_b + offs_t[None, :] * s_dt_l + offs_h[:, None] * s_dt_h
        v = tl.load(DT + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            v += tl.load(BIAS + offs_h, mask=mh, other=0.0).to(tl.float32)[:, None]
        ddt = ddt * tl.sigmoid(v)
    ddt = tl.where(mask, ddt, 0.0)
    if HAS_BIAS:
        tl.atomic_add(DBIAS_OUT + offs_h, tl.sum(ddt, axis=1), mask=mh)
    out = (pid_b * seqlen + offs_t[None, :]) * nheads + offs_h[:, None]
    tl.store(DT_OUT + out, ddt.to(DT_OUT.dtype.element_ty), mask=mask)
