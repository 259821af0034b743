# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Triton kernels of Mamba-2's chunked SSD, forward and backward. Launchers are in `ssd.py`.

Notation, per (batch, head), chunk c of Q tokens, token i of the chunk:

    a_i   = sum_{k<=i} dt_k A              cumulative log decay inside the chunk   (chunk_cumsum)
    s_c   = sum_j exp(a_last - a_j) dt_j x_j B_jᵀ          the chunk's own state (p, n)   (chunk_state)
    S_c   = state entering chunk c:  S_{c+1} = exp(a_last) S_c + s_c                   (state_passing)
    CB_ij = C_i · B_j                                  per group, (Q, Q) per chunk       (bmm_cb)
    y_i   = sum_{j<=i} CB_ij exp(a_i - a_j) dt_j x_j + exp(a_i) S_c C_i + D x_i        (chunk_scan)

Documents (seq_idx): a decay between tokens of different documents is 0; a chunk's own state only
gathers tokens of its last document; S_c survives chunk c only if the chunk ends in the document of S_c
(the document of chunk c-1's last token, or of token 0 for the initial state) and only tokens of that
document read it.

Backward (dy given, G_c = dL/dS_c):

    u_c    = sum_i exp(a_i) dy_i C_iᵀ                       (chunk_state kernel, REVERSE mode)
    G_c    = exp(a_last,c) G_{c+1} + u_c,   G_nc = dL/dfinal,   ds_c = G_{c+1}   (state_passing, REVERSE)
    dx_j   = dt_j sum_{i>=j} CB_ij exp(a_i - a_j) dy_i + dt_j exp(a_last - a_j) ds_c B_j + D dy_j
    ddt_j  = sum_{i>=j} CB_ij exp(a_i - a_j) dy_i·x_j + exp(a_last - a_j) x_j·(ds_c B_j)       (=: r_j + q_j)
    dA_k   (gradient w.r.t. the step log decay dt_k A) = sum_{i >= k > j} W_ij            (bwd_dcb, no cancellation)
             + sum_{i >= k} exp(a_i) dy_i·(S_c C_i)  + sum_{j < k} dt_j q_j + exp(a_last) <G_{c+1}, S_c>
             with W_ij = CB_ij exp(a_i - a_j) dt_j dy_i·x_j
    dCB_ij = sum_{heads of the group} exp(a_i - a_j) dt_j dy_i·x_j   (i >= j);  dC = dCB B + ..., dB = dCBᵀ C + ...
    dC_i  += sum_h exp(a_i) dy_i S_c;   dB_j += sum_h exp(a_last - a_j) dt_j x_j ds_c

The intra-chunk dA_k term is summed over the rectangle i >= k > j directly (as mamba_ssm's "stable" ddA
does) rather than as a row-sum minus column-sum difference, which cancels badly in bf16. Then
ddt_k = r_k + q_k + A dA_k and dA = sum_k dt_k dA_k, in torch on the small (b, h, L) tensors.

The second pipeline (the default; see `ssd.py`) uses the same kernels with FACTOR (block-factorised decay in
chunk_scan / bwd_dx / bwd_dcb), DA2 (the intra-chunk dA from bwd_dx's block sums, see its docstring), ONE_K
and FUSE_CB (dB/dC intra parts in bwd_bc_state), plus the fused state walks and the ddt tail of
`ssd_kernels_fused.py`.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _pids(n1, n2, SWZ: tl.constexpr):
    """(pid0, pid1, pid2) of a logical (n0, n1, n2) grid. SWZ: the launch grid is flat (n0 * n1 * n2,) with
    pid1, pid2 varying fastest, so the programs sharing one pid0 (one chunk / head) run side by side and
    their common loads hit L2 (CUDA starts blocks in x-fastest order)."""
    if SWZ:
        q = tl.program_id(0)
        inner = q % (n1 * n2)
        return q // (n1 * n2), inner // n2, inner % n2
    else:
        return tl.program_id(0), tl.program_id(1), tl.program_id(2)


# ----------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def chunk_cumsum_kernel(
    DT, A, BIAS, DT_OUT, DA_OUT,
    seqlen, nheads,
    s_dt_b, s_dt_l, s_dt_h,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, Q: tl.constexpr, BH: tl.constexpr,
):
    """dt_eff = softplus(dt + bias) (or dt + bias) and a = cumsum(dt_eff * A) per chunk.
    Grid (b, nchunks, cdiv(h, BH)). Outputs (b, h, nchunks, Q) fp32; padded tokens get dt_eff = 0."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    pid_h = tl.program_id(2)
    nchunks = tl.num_programs(1)
    offs_h = pid_h * BH + tl.arange(0, BH)
    offs_t = pid_c * Q + tl.arange(0, Q)
    mask_h = offs_h < nheads
    mask = mask_h[:, None] & (offs_t[None, :] < seqlen)
    dt = tl.load(DT + pid_b * s_dt_b + offs_t[None, :] * s_dt_l + offs_h[:, None] * s_dt_h, mask=mask, other=0.0)
    dt = dt.to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(BIAS + offs_h, mask=mask_h, other=0.0).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    dt = tl.where(mask, dt, 0.0)
    a = tl.load(A + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    da = tl.cumsum(dt * a[:, None], axis=1)
    out = ((pid_b * nheads + offs_h[:, None]) * nchunks + pid_c) * Q + tl.arange(0, Q)[None, :]
    tl.store(DT_OUT + out, dt, mask=mask_h[:, None])
    tl.store(DA_OUT + out, da, mask=mask_h[:, None])


@triton.jit
def chunk_state_kernel(
    X, BM, DT, DA, SEQ, OUT,
    seqlen, nheads, ngroups, headdim, dstate,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_seq_b, s_seq_l,
    REVERSE: tl.constexpr, HAS_SEQ: tl.constexpr, IEEE: tl.constexpr,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Forward: OUT[b,c,h] = sum_j x_j (exp(a_last - a_j) dt_j B_j)ᵀ  (tokens of the chunk's last document).
    REVERSE (X = dy, BM = C): OUT[b,c,h] = sum_i dy_i (exp(a_i) C_i)ᵀ  (tokens of the incoming state's document).
    Grid (b * nchunks * h, cdiv(p, BP) * cdiv(n, BN)). OUT (b, c, h, p, n) fp32."""
    pid = tl.program_id(0)
    pid_pn = tl.program_id(1)
    h = pid % nheads
    bc = pid // nheads
    nchunks = tl.cdiv(seqlen, Q)
    c = bc % nchunks
    b = bc // nchunks
    bc = bc.to(tl.int64)  # offsets of large tensors need 64 bits
    b = b.to(tl.int64)
    g = h // (nheads // ngroups)
    npb = tl.cdiv(dstate, BN)
    offs_p = (pid_pn // npb) * BP + tl.arange(0, BP)
    offs_n = (pid_pn % npb) * BN + tl.arange(0, BN)
    t0 = c * Q
    da_base = ((b * nheads + h) * nchunks + c) * Q
    a_last = tl.load(DA + da_base + Q - 1)
    if HAS_SEQ:
        if REVERSE:
            ref_t = tl.maximum(t0 - 1, 0)
        else:
            ref_t = tl.minimum(t0 + Q, seqlen) - 1
        seq_ref = tl.load(SEQ + b * s_seq_b + ref_t * s_seq_l)
    acc = tl.zeros((BP, BN), dtype=tl.float32)
    xb = X + b * s_x_b + h * s_x_h
    bb = BM + b * s_b_b + g * s_b_g
    for k in range(0, Q, BK):
        offs_k = k + tl.arange(0, BK)
        t = t0 + offs_k
        mt = t < seqlen
        xt = tl.load(xb + t[None, :] * s_x_l + offs_p[:, None] * s_x_p,
                     mask=mt[None, :] & (offs_p[:, None] < headdim), other=0.0)  # (BP, BK)
        bt = tl.load(bb + t[:, None] * s_b_l + offs_n[None, :] * s_b_n,
                     mask=mt[:, None] & (offs_n[None, :] < dstate), other=0.0)  # (BK, BN)
        a_k = tl.load(DA + da_base + offs_k)
        if REVERSE:
            w = tl.exp(a_k)
        else:
            w = tl.exp(a_last - a_k) * tl.load(DT + da_base + offs_k)
        if HAS_SEQ:
            sq = tl.load(SEQ + b * s_seq_b + t * s_seq_l, mask=mt, other=-1)
            w = tl.where(sq == seq_ref, w, 0.0)
        w = tl.where(mt, w, 0.0)
        bt = (bt.to(tl.float32) * w[:, None]).to(X.dtype.element_ty)
        acc += _dot(xt, bt, IEEE)
    out = OUT + (bc * nheads + h) * headdim * dstate
    tl.store(out + offs_p[:, None] * dstate + offs_n[None, :], acc,
             mask=(offs_p[:, None] < headdim) & (offs_n[None, :] < dstate))


@triton.jit
def state_passing_kernel(
    STATES, DA, INIT, SEQ, OUT, FINAL, DA_GRAD,
    seqlen, nheads, size,
    s_seq_b, s_seq_l,
    REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, STORE: tl.constexpr,
    Q: tl.constexpr, BS: tl.constexpr,
):
    """Sequential scan over chunks for one (b, h) and a slice BS of the flattened (p*n) state.
    Grid (b * h, cdiv(p * n, BS)); chunked tensors (b, c, h, p, n) fp32.
    Forward: OUT[c] = S_c (state entering chunk c), S_{c+1} = exp(a_last) S_c + STATES[c]; FINAL = S_nc;
        INIT = initial state (if HAS_INIT); DA_GRAD unused; OUT written only if STORE.
    REVERSE: STATES = u, INIT = dL/dfinal on entry (HAS_INIT must be set) and dL/dinitial on exit,
        FINAL = the forward's S_c (read), OUT[c] = G_{c+1} = ds_c, and DA_GRAD (b, h, c, Q) gets
        exp(a_last) <G_{c+1}, S_c> added at each chunk's last slot."""
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1)
    h = pid_bh % nheads
    b = pid_bh // nheads
    nchunks = tl.cdiv(seqlen, Q)
    offs = pid_s * BS + tl.arange(0, BS)
    m = offs < size
    if HAS_INIT:
        s = tl.load(INIT + pid_bh * size + offs, mask=m, other=0.0).to(tl.float32)
    else:
        s = tl.zeros((BS,), dtype=tl.float32)
    if not REVERSE:
        for c in range(0, nchunks):
            base = ((b * nchunks + c) * nheads + h) * size
            if STORE:
                tl.store(OUT + base + offs, s, mask=m)
            scale = tl.exp(tl.load(DA + ((b * nheads + h) * nchunks + c) * Q + Q - 1))
            if HAS_SEQ:
                last = tl.load(SEQ + b * s_seq_b + (tl.minimum(c * Q + Q, seqlen) - 1) * s_seq_l)
                prev = tl.load(SEQ + b * s_seq_b + tl.maximum(c * Q - 1, 0) * s_seq_l)
                scale = tl.where(last == prev, scale, 0.0)
            s = scale * s + tl.load(STATES + base + offs, mask=m, other=0.0)
        tl.store(FINAL + pid_bh * size + offs, s, mask=m)
    else:
        for cc in range(0, nchunks):
            c = nchunks - 1 - cc
            base = ((b * nchunks + c) * nheads + h) * size
            tl.store(OUT + base + offs, s, mask=m)
            da_idx = ((b * nheads + h) * nchunks + c) * Q + Q - 1
            scale = tl.exp(tl.load(DA + da_idx))
            if HAS_SEQ:
                last = tl.load(SEQ + b * s_seq_b + (tl.minimum(c * Q + Q, seqlen) - 1) * s_seq_l)
                prev = tl.load(SEQ + b * s_seq_b + tl.maximum(c * Q - 1, 0) * s_seq_l)
                scale = tl.where(last == prev, scale, 0.0)
            s_prev = tl.load(FINAL + base + offs, mask=m, other=0.0).to(tl.float32)
            tl.atomic_add(DA_GRAD + da_idx, scale * tl.sum(s * s_prev, axis=0))
            s = scale * s + tl.load(STATES + base + offs, mask=m, other=0.0)
        tl.store(INIT + pid_bh * size + offs, s, mask=m)


@triton.jit
def bmm_cb_kernel(
    C, BM, OUT,
    seqlen, ngroups, dstate,
    s_b_b, s_b_l, s_b_g, s_b_n,
    IEEE: tl.constexpr, Q: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
):
    """OUT[b, c, g, i, j] = C_i · B_j for the lower block triangle (j-block <= i-block). Grid
    (b * nchunks * g, Q // BI, Q // BJ). B and C share strides. OUT fp32 (b, c, g, Q, Q)."""
    pid = tl.program_id(0).to(tl.int64)
    pi = tl.program_id(1)
    pj = tl.program_id(2)
    if pj * BJ > pi * BI + BI - 1:
        return
    g = pid % ngroups
    bc = pid // ngroups
    nchunks = tl.cdiv(seqlen, Q)
    c = bc % nchunks
    b = bc // nchunks
    bc = bc.to(tl.int64)  # offsets of large tensors need 64 bits
    b = b.to(tl.int64)
    ti = c * Q + pi * BI + tl.arange(0, BI)
    tj = c * Q + pj * BJ + tl.arange(0, BJ)
    acc = tl.zeros((BI, BJ), dtype=tl.float32)
    base = b * s_b_b + g * s_b_g
    for k in range(0, dstate, BK):
        offs_k = k + tl.arange(0, BK)
        mk = offs_k < dstate
        ci = tl.load(C + base + ti[:, None] * s_b_l + offs_k[None, :] * s_b_n,
                     mask=(ti[:, None] < seqlen) & mk[None, :], other=0.0)
        bj = tl.load(BM + base + tj[None, :] * s_b_l + offs_k[:, None] * s_b_n,
                     mask=(tj[None, :] < seqlen) & mk[:, None], other=0.0)
        acc += _dot(ci, bj, IEEE)
    out = OUT + pid * Q * Q
    tl.store(out + (pi * BI + tl.arange(0, BI))[:, None] * Q + (pj * BJ + tl.arange(0, BJ))[None, :], acc)


@triton.jit
def chunk_scan_kernel(
    X, CM, CB, DT, DA, SPREV, SEQ, DPTR, Z, Y, YPRE,
    seqlen, nheads, ngroups, headdim, dstate,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_seq_b, s_seq_l,
    HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr,
    IEEE: tl.constexpr, Q: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, FACTOR: tl.constexpr = False, SWZ: tl.constexpr = False,
):
    """y_i = exp(a_i) C_i S_c + sum_{j<=i} CB_ij exp(a_i - a_j) dt_j x_j + D x_i  (then YPRE = y, Y = y silu(z)).
    Grid (b * nchunks * h, Q // BM, cdiv(p, BP)). X, Z, Y, YPRE share strides. BN >= dstate. CB fp32 or
    the inputs' dtype.

    FACTOR: for column blocks strictly before the row block, exp(a_i - a_j) = exp(a_i - a_r) exp(a_r - a_j)
    with a_r = a at the row block's first token: the column factor scales x (BK x BP) and the row factor
    the block's sum, so no 2-D exp and no (BM, BK) fp32 weight tile. Both factors are entries of the decay
    matrix itself (<= 1 when dt A <= 0, the stable case); only the diagonal block uses the 2-D form."""
    pid, pm, pp = _pids(Q // BM, tl.cdiv(headdim, BP), SWZ)
    h = pid % nheads
    bc = pid // nheads
    nchunks = tl.cdiv(seqlen, Q)
    c = bc % nchunks
    b = bc // nchunks
    bc = bc.to(tl.int64)  # offsets of large tensors need 64 bits
    b = b.to(tl.int64)
    g = h // (nheads // ngroups)
    t0 = c * Q
    offs_m = pm * BM + tl.arange(0, BM)
    tm = t0 + offs_m
    mm = tm < seqlen
    offs_p = pp * BP + tl.arange(0, BP)
    mp = offs_p < headdim
    offs_n = tl.arange(0, BN)
    mn = offs_n < dstate
    da_base = ((b * nheads + h) * nchunks + c) * Q
    a_m = tl.load(DA + da_base + offs_m)
    # incoming state, read through C
    cm = tl.load(CM + b * s_c_b + g * s_c_g + tm[:, None] * s_c_l + offs_n[None, :] * s_c_n,
                 mask=mm[:, None] & mn[None, :], other=0.0)  # (BM, BN)
    sp = tl.load(SPREV + (bc * nheads + h) * headdim * dstate + offs_p[None, :] * dstate + offs_n[:, None],
                 mask=mp[None, :] & mn[:, None], other=0.0)  # (BN, BP) = S_cᵀ
    w_state = tl.exp(a_m)
    if HAS_SEQ:
        seq_m = tl.load(SEQ + b * s_seq_b + tm * s_seq_l, mask=mm, other=-1)
        seq_prev = tl.load(SEQ + b * s_seq_b + tl.maximum(t0 - 1, 0) * s_seq_l)
        w_state = tl.where(seq_m == seq_prev, w_state, 0.0)
    acc = _dot(cm, sp.to(cm.dtype), IEEE) * w_state[:, None]
    # intra-chunk
    xb = X + b * s_x_b + h * s_x_h
    cbb = CB + (bc * ngroups + g) * Q * Q
    if FACTOR:
        a_r = tl.load(DA + da_base + pm * BM)
        acc2 = tl.zeros((BM, BP), dtype=tl.float32)
        for k in range(0, pm * BM, BK):
            offs_k = k + tl.arange(0, BK)
            tk = t0 + offs_k
            mk = tk < seqlen
            xk = tl.load(xb + tk[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mk[:, None] & mp[None, :], other=0.0)
            cb = tl.load(cbb + offs_m[:, None] * Q + offs_k[None, :])  # (BM, BK)
            if HAS_SEQ:
                seq_k = tl.load(SEQ + b * s_seq_b + tk * s_seq_l, mask=mk, other=-2)
                cb = tl.where(seq_m[:, None] == seq_k[None, :], cb, 0.0)
            wk = tl.exp(a_r - tl.load(DA + da_base + offs_k)) * tl.load(DT + da_base + offs_k)
            acc2 += _dot(cb.to(xk.dtype), (xk.to(tl.float32) * wk[:, None]).to(xk.dtype), IEEE)
        acc += acc2 * tl.exp(a_m - a_r)[:, None]
        k_start = pm * BM
    else:
        k_start = 0
    for k in range(k_start, (pm + 1) * BM, BK):
        offs_k = k + tl.arange(0, BK)
        tk = t0 + offs_k
        mk = tk < seqlen
        cb = tl.load(cbb + offs_m[:, None] * Q + offs_k[None, :]).to(tl.float32)  # (BM, BK)
        a_k = tl.load(DA + da_base + offs_k)
        dt_k = tl.load(DT + da_base + offs_k)
        keep = offs_m[:, None] >= offs_k[None, :]
        if HAS_SEQ:
            seq_k = tl.load(SEQ + b * s_seq_b + tk * s_seq_l, mask=mk, other=-2)
            keep &= seq_m[:, None] == seq_k[None, :]
        w = tl.where(keep, cb * tl.exp(tl.where(keep, a_m[:, None] - a_k[None, :], 0.0)) * dt_k[None, :], 0.0)
        xk = tl.load(xb + tk[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mk[:, None] & mp[None, :], other=0.0)
        acc += _dot(w.to(xk.dtype), xk, IEEE)
    off_out = b * s_x_b + h * s_x_h + tm[:, None] * s_x_l + offs_p[None, :] * s_x_p
    mo = mm[:, None] & mp[None, :]
    if HAS_D:
        xm = tl.load(X + off_out, mask=mo, other=0.0).to(tl.float32)
        if D_PER_P:
            d = tl.load(DPTR + h * headdim + offs_p, mask=mp, other=0.0).to(tl.float32)
            acc += xm * d[None, :]
        else:
            acc += xm * tl.load(DPTR + h).to(tl.float32)
    if HAS_Z:
        tl.store(YPRE + off_out, acc, mask=mo)
        zz = tl.load(Z + off_out, mask=mo, other=0.0).to(tl.float32)
        acc = acc * zz * tl.sigmoid(zz)
    tl.store(Y + off_out, acc, mask=mo)


# ----------------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def bwd_dx_kernel(
    X, DY, BM, CB, DT, DA, DS, SEQ, DPTR,
    DX, DDT, DDA, DD, DDA_IN, DIFF,
    seqlen, nheads, ngroups, headdim, dstate,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_seq_b, s_seq_l,
    HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr, STABLE_DA: tl.constexpr,
    IEEE: tl.constexpr, Q: tl.constexpr, BJ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, FACTOR: tl.constexpr = False, WDIAG: tl.constexpr = False, DA2: tl.constexpr = False,
    TRIDOT: tl.constexpr = False, SWZ: tl.constexpr = False,
):
    """For tokens j of a block: dx_j, and the (b, h, c, Q) partial sums of ddt_j and da_j (atomics over p
    blocks), dD partial (b, c, h, Q // BJ, p). X, DY, DX share strides. Grid (b * nchunks * h, Q // BJ, cdiv(p, BP)).
    With STABLE_DA, also the intra-chunk dA sum over i >= k > j (see bwd_dcb_kernel) from the tiles this
    program visits (i >= its j block), with M_ij = dy_i·x_j computed here (partial over p blocks): k in the
    j block from the 2-D form (off-block tiles: exclusive cumsum of column sums, kept in registers), k in
    an off-block i tile from the reverse cumsum of row sums, k between the two through DIFF.
    FACTOR (not with STABLE_DA): row blocks after the j block use exp(a_i - a_j) = exp(a_i - a_r) exp(a_r - a_j),
    a_r = a at the j block's last token (as in chunk_scan_kernel).
    WDIAG: the tiles visited by the main loop get W_ij (set with STABLE_DA and with DA2).
    TRIDOT: the diagonal tiles' prefix sums over j as a dot (see _excl_prefix).
    DA2 (needs FACTOR and WDIAG; the dCB kernel then skips dA): the whole intra-chunk dA for k in this
    program's block K, without per-tile W off the diagonal:
        sum_{i >= k > j} W_ij = [i, j in K: 2-D form on the diagonal tile]
            + [j in K, i after K: exclusive cumsum over j of col_j = dt_j exp(a_r - a_j) x_j · acc2_j,
               acc2 = the factorised off-block sum of the dx loop]
            + [i in K, j before K: reverse cumsum over i of row_i = exp(a_i - a_r') dy_i · acc3_i,
               acc3_i = sum_{j before K} CB_ij exp(a_r' - a_j) dt_j x_j, a_r' = a at K's first token]
            + [j before K, i after K: through DIFF, from the (K, J) block totals of the acc3 loop]."""
    pid, pj, pp = _pids(Q // BJ, tl.cdiv(headdim, BP), SWZ)
    h = pid % nheads
    bc = pid // nheads
    nchunks = tl.cdiv(seqlen, Q)
    c = bc % nchunks
    b = bc // nchunks
    bc = bc.to(tl.int64)  # offsets of large tensors need 64 bits
    b = b.to(tl.int64)
    g = h // (nheads // ngroups)
    t0 = c * Q
    offs_j = pj * BJ + tl.arange(0, BJ)
    tj = t0 + offs_j
    mj = tj < seqlen
    offs_p = pp * BP + tl.arange(0, BP)
    mp = offs_p < headdim
    offs_n = tl.arange(0, BN)
    mn = offs_n < dstate
    da_base = ((b * nheads + h) * nchunks + c) * Q
    a_j = tl.load(DA + da_base + offs_j)
    dt_j = tl.load(DT + da_base + offs_j)
    a_last = tl.load(DA + da_base + Q - 1)
    if HAS_SEQ:
        seq_j = tl.load(SEQ + b * s_seq_b + tj * s_seq_l, mask=mj, other=-1)
        seq_last = tl.load(SEQ + b * s_seq_b + (tl.minimum(t0 + Q, seqlen) - 1) * s_seq_l)
    xyb = b * s_x_b + h * s_x_h
    # intra-chunk: acc[j, p] = sum_{i>=j} CB_ij exp(a_i - a_j) dy_i[p]
    acc = tl.zeros((BJ, BP), dtype=tl.float32)
    cbb = CB + (bc * ngroups + g) * Q * Q
    if WDIAG:
        xj_raw = tl.load(X + xyb + tj[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                         mask=mj[:, None] & mp[None, :], other=0.0)  # (BJ, BP)
        c1 = tl.zeros((BJ,), dtype=tl.float32)
    if FACTOR:
        a_r = tl.load(DA + da_base + pj * BJ + BJ - 1)
        acc2 = tl.zeros((BJ, BP), dtype=tl.float32)
        for k in range(pj * BJ + BJ, Q, BK):
            offs_i = k + tl.arange(0, BK)
            ti = t0 + offs_i
            mi = ti < seqlen
            dyi = tl.load(DY + xyb + ti[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                          mask=mi[:, None] & mp[None, :], other=0.0)
            cb = tl.load(cbb + offs_i[:, None] * Q + offs_j[None, :])  # (BK, BJ), rows i
            if HAS_SEQ:
                seq_i = tl.load(SEQ + b * s_seq_b + ti * s_seq_l, mask=mi, other=-2)
                cb = tl.where(seq_i[:, None] == seq_j[None, :], cb, 0.0)
            wi = tl.exp(tl.load(DA + da_base + offs_i) - a_r)
            acc2 += _dot(tl.trans(cb.to(dyi.dtype)), (dyi.to(tl.float32) * wi[:, None]).to(dyi.dtype), IEEE)
        acc += acc2 * tl.exp(a_r - a_j)[:, None]
        k_end = pj * BJ + BJ
        if DA2:
            # j in K, i after K
            col = dt_j * tl.exp(a_r - a_j) * tl.sum(xj_raw.to(tl.float32) * acc2, axis=1)
            c1 += tl.cumsum(col, axis=0) - col
            # i in K, j before K (and j before K, i after K through the block totals)
            a_r2 = tl.load(DA + da_base + pj * BJ)
            dys = tl.load(DY + xyb + tj[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                          mask=mj[:, None] & mp[None, :], other=0.0).to(tl.float32) * tl.exp(a_j - a_r2)[:, None]
            acc3 = tl.zeros((BJ, BP), dtype=tl.float32)
            for k in range(0, pj * BJ, BJ):  # one step per block J: one block total per step
                offs_k = k + tl.arange(0, BJ)
                tk = t0 + offs_k
                mk = tk < seqlen
                xk = tl.load(X + xyb + tk[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                             mask=mk[:, None] & mp[None, :], other=0.0)  # (BK, BP)
                cbt = tl.load(cbb + offs_j[:, None] * Q + offs_k[None, :])  # (BJ, BJ), rows i in K
                if HAS_SEQ:
                    seq_k = tl.load(SEQ + b * s_seq_b + tk * s_seq_l, mask=mk, other=-2)
                    cbt = tl.where(seq_j[:, None] == seq_k[None, :], cbt, 0.0)
                wk = tl.exp(a_r2 - tl.load(DA + da_base + offs_k)) * tl.load(DT + da_base + offs_k)
                part = _dot(cbt.to(xk.dtype), (xk.to(tl.float32) * wk[:, None]).to(xk.dtype), IEEE)
                acc3 += part
                if k < pj * BJ - BJ:  # block J = k // BJ not adjacent to K: its pairs straddle the blocks between
                    tot = tl.sum(tl.sum(dys * part, axis=1), axis=0)
                    tl.atomic_add(DIFF + da_base + k + BJ, tot)
                    tl.atomic_add(DIFF + da_base + pj * BJ, -tot)
            c1 += tl.cumsum(tl.sum(dys * acc3, axis=1), axis=0, reverse=True)
    else:
        k_end = Q
    for k in range(pj * BJ, k_end, BK):
        offs_i = k + tl.arange(0, BK)
        ti = t0 + offs_i
        mi = ti < seqlen
        cb = tl.load(cbb + offs_i[:, None] * Q + offs_j[None, :]).to(tl.float32)  # (BK, BJ), rows i
        a_i = tl.load(DA + da_base + offs_i)
        keep = (offs_i[:, None] >= offs_j[None, :]) & mi[:, None]
        if HAS_SEQ:
            seq_i = tl.load(SEQ + b * s_seq_b + ti * s_seq_l, mask=mi, other=-2)
            keep &= seq_i[:, None] == seq_j[None, :]
        w = tl.where(keep, cb * tl.exp(tl.where(keep, a_i[:, None] - a_j[None, :], 0.0)), 0.0)
        dyi = tl.load(DY + xyb + ti[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                      mask=mi[:, None] & mp[None, :], other=0.0)
        acc += _dot(tl.trans(w.to(dyi.dtype)), dyi, IEEE)
        if WDIAG:
            wm = w * _dot(dyi, tl.trans(xj_raw), IEEE) * dt_j[None, :]  # W_ij (BK, BJ)
            if k >= pj * BJ + BJ:
                col = tl.sum(wm, axis=0)
                c1 += tl.cumsum(col, axis=0) - col
                row = tl.sum(wm, axis=1)
                tot = tl.sum(row, axis=0)
                tl.atomic_add(DDA_IN + da_base + offs_i, tot - tl.cumsum(row, axis=0) + row)
                tl.atomic_add(DIFF + da_base + pj * BJ + BJ, tot)
                tl.atomic_add(DIFF + da_base + k, -tot)
            else:
                rr = _excl_prefix(wm, offs_j, IEEE, TRIDOT)  # rr[i, k'] = sum_{j<k'} W_ij
                c1 += tl.sum(tl.where(offs_i[:, None] >= offs_j[None, :], rr, 0.0), axis=0)
    if WDIAG:
        tl.atomic_add(DDA_IN + da_base + offs_j, c1)
    off_j = xyb + tj[:, None] * s_x_l + offs_p[None, :] * s_x_p
    mo = mj[:, None] & mp[None, :]
    xj = tl.load(X + off_j, mask=mo, other=0.0).to(tl.float32)
    r = tl.sum(acc * xj, axis=1)  # ddt intra part (partial over p)
    # chunk-state part: z[j, p] = exp(a_last - a_j) (ds B_j)[p]
    bj = tl.load(BM + b * s_b_b + g * s_b_g + tj[:, None] * s_b_l + offs_n[None, :] * s_b_n,
                 mask=mj[:, None] & mn[None, :], other=0.0)  # (BJ, BN)
    ds = tl.load(DS + (bc * nheads + h) * headdim * dstate + offs_p[None, :] * dstate + offs_n[:, None],
                 mask=mp[None, :] & mn[:, None], other=0.0)  # (BN, BP) = dsᵀ
    wz = tl.exp(a_last - a_j)
    if HAS_SEQ:
        wz = tl.where(seq_j == seq_last, wz, 0.0)
    wz = tl.where(mj, wz, 0.0)
    zs = _dot(bj, ds.to(bj.dtype), IEEE) * wz[:, None]
    q = tl.sum(zs * xj, axis=1)
    dx = (acc + zs) * dt_j[:, None]
    dyj = tl.load(DY + off_j, mask=mo, other=0.0).to(tl.float32)
    if HAS_D:
        if D_PER_P:
            d = tl.load(DPTR + h * headdim + offs_p, mask=mp, other=0.0).to(tl.float32)[None, :]
        else:
            d = tl.load(DPTR + h).to(tl.float32)
        dx += dyj * d
        tl.store(DD + ((bc * nheads + h) * (Q // BJ) + pj) * headdim + offs_p,
                 tl.sum(dyj * xj, axis=0), mask=mp)
    tl.store(DX + off_j, dx, mask=mo)
    tl.atomic_add(DDT + da_base + offs_j, r + q, mask=mj)
    tl.atomic_add(DDA + da_base + offs_j, -dt_j * q, mask=mj)
    tl.atomic_add(DDA + da_base + Q - 1, tl.sum(dt_j * q, axis=0))


@triton.jit
def _excl_prefix(w, offs, IEEE: tl.constexpr, TRIDOT: tl.constexpr):
    """r[i, k] = sum_{j<k} w[i, j] for a (rows, len(offs)) fp32 tile: a scan along axis 1, or (TRIDOT) one dot
    with the strictly upper-triangular ones matrix (IEEE fp32, or 3-pass tf32 for 16-bit inputs: ~fp32)."""
    if TRIDOT:
        s = (offs[:, None] < offs[None, :]).to(tl.float32)
        if IEEE:
            return tl.dot(w, s, input_precision="ieee")
        else:
            return tl.dot(w, s, input_precision="tf32x3")
    else:
        return tl.cumsum(w, axis=1) - w


@triton.jit
def _da_offdiag(w, DDA_IN, DIFF, da_base, offs_i, offs_j, pi, pj, BI: tl.constexpr, BJ: tl.constexpr):
    """dA terms of an off-diagonal tile W (i block after j block): see bwd_dcb_kernel."""
    col = tl.sum(w, axis=0)
    row = tl.sum(w, axis=1)
    tot = tl.sum(row, axis=0)
    tl.atomic_add(DDA_IN + da_base + offs_j, tl.cumsum(col, axis=0) - col)
    tl.atomic_add(DDA_IN + da_base + offs_i, tot - tl.cumsum(row, axis=0) + row)
    tl.atomic_add(DIFF + da_base + pj * BJ + BJ, tot)
    tl.atomic_add(DIFF + da_base + pi * BI, -tot)


@triton.jit
def _da_diag(w, DDA_IN, da_base, offs_i, offs_j, IEEE: tl.constexpr, TRIDOT: tl.constexpr):
    """dA terms of a diagonal tile W: DDA_IN[k] += sum_{i >= k > j} W_ij (2-D form)."""
    r = _excl_prefix(w, offs_j, IEEE, TRIDOT)  # r[i, k] = sum_{j<k} W_ij
    contrib = tl.sum(tl.where(offs_i[:, None] >= offs_j[None, :], r, 0.0), axis=0)
    tl.atomic_add(DDA_IN + da_base + offs_j, contrib)


@triton.jit
def _dcb_heads(X, DY, DT, DA, DDA_IN, DIFF, cb, keep, b, c, g, pi, pj, split, ti, tj, mi, mj, offs_i, offs_j,
               nheads, ngroups, nchunks, headdim, s_x_b, s_x_l, s_x_h, s_x_p,
               STABLE_DA: tl.constexpr, IEEE: tl.constexpr, NSPLIT: tl.constexpr, Q: tl.constexpr,
               BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, FACT: tl.constexpr, ONE_K: tl.constexpr,
               OFFD: tl.constexpr = 0, TRIDOT: tl.constexpr = False):
    """The head loop of bwd_dcb_kernel for one tile: returns sum_h W_ij / CB_ij (the dCB tile) and, with
    STABLE_DA, adds the tile's dA terms. FACT: the factorised decay (off-diagonal tiles only). OFFD: the
    tile is known at compile time to be off-diagonal (1) or diagonal (2), or checked at run time (0; a
    branch inside the head loop keeps it from being software-pipelined). TRIDOT: see _excl_prefix."""
    acc = tl.zeros((BI, BJ), dtype=tl.float32)
    hpg = nheads // ngroups
    hps = hpg // NSPLIT
    for hh in range(split * hps, split * hps + hps):
        h = g * hpg + hh
        da_base = ((b * nheads + h) * nchunks + c) * Q
        a_i = tl.load(DA + da_base + offs_i)
        a_j = tl.load(DA + da_base + offs_j)
        dt_j = tl.load(DT + da_base + offs_j)
        if ONE_K:  # headdim <= BK: no inner loop, so the head loop is the pipelined one
            offs_k = tl.arange(0, BK)
            mk = offs_k < headdim
            dyi = tl.load(DY + b * s_x_b + h * s_x_h + ti[:, None] * s_x_l + offs_k[None, :] * s_x_p,
                          mask=mi[:, None] & mk[None, :], other=0.0)
            xj = tl.load(X + b * s_x_b + h * s_x_h + tj[None, :] * s_x_l + offs_k[:, None] * s_x_p,
                         mask=mj[None, :] & mk[:, None], other=0.0)
            m = _dot(dyi, xj, IEEE)
        else:
            m = tl.zeros((BI, BJ), dtype=tl.float32)
            for k in range(0, headdim, BK):
                offs_k = k + tl.arange(0, BK)
                mk = offs_k < headdim
                dyi = tl.load(DY + b * s_x_b + h * s_x_h + ti[:, None] * s_x_l + offs_k[None, :] * s_x_p,
                              mask=mi[:, None] & mk[None, :], other=0.0)
                xj = tl.load(X + b * s_x_b + h * s_x_h + tj[None, :] * s_x_l + offs_k[:, None] * s_x_p,
                             mask=mj[None, :] & mk[:, None], other=0.0)
                m += _dot(dyi, xj, IEEE)
        if FACT:
            a_r = tl.load(DA + da_base + pi * BI)
            w = tl.where(keep, m * tl.exp(a_i - a_r)[:, None] * (tl.exp(a_r - a_j) * dt_j)[None, :], 0.0)
        else:
            w = tl.where(keep, m * tl.exp(tl.where(keep, a_i[:, None] - a_j[None, :], 0.0)) * dt_j[None, :], 0.0)
        acc += w
        if STABLE_DA:
            w = w * cb
        if not STABLE_DA:
            pass
        elif OFFD == 1:
            _da_offdiag(w, DDA_IN, DIFF, da_base, offs_i, offs_j, pi, pj, BI, BJ)
        elif OFFD == 2:
            _da_diag(w, DDA_IN, da_base, offs_i, offs_j, IEEE, TRIDOT)
        elif pj < pi:
            _da_offdiag(w, DDA_IN, DIFF, da_base, offs_i, offs_j, pi, pj, BI, BJ)
        else:
            _da_diag(w, DDA_IN, da_base, offs_i, offs_j, IEEE, TRIDOT)
    return acc


@triton.jit
def bwd_dcb_kernel(
    X, DY, DT, DA, SEQ, CBIN, OUT, DDA_IN, DIFF,
    seqlen, nheads, ngroups, headdim,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_seq_b, s_seq_l,
    HAS_SEQ: tl.constexpr, STABLE_DA: tl.constexpr, IEEE: tl.constexpr, NSPLIT: tl.constexpr,
    Q: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, FACTOR: tl.constexpr = False,
    ONE_K: tl.constexpr = False, TRIDOT: tl.constexpr = False, SWZ: tl.constexpr = False,
):
    """OUT[b, c, g, i, j] = sum_{h of g} exp(a_i - a_j) dt_j dy_i·x_j for i >= j (0 elsewhere); OUT holds
    C·B on entry (read before it is overwritten, tile by tile).

    With STABLE_DA (else bwd_dx_kernel does it), also the intra-chunk gradient with respect to each step's log decay dA_k = dt_k A, summed without
    cancellation: with W_ij = CB_ij exp(a_i - a_j) dt_j dy_i·x_j (one head), a_i - a_j = dA_{j+1} + ... + dA_i,
    so d/d dA_k = sum_{i >= k > j} W_ij. Per tile (BI == BJ): k in the j block gets the exclusive cumsum of
    the column sums, k in the i block the reverse cumsum of the row sums, k strictly between the blocks the
    tile total (added through DIFF, a difference array: +total at the j block's end, -total at the i
    block's start; the caller cumsums it); a diagonal tile uses the 2-D form. DDA_IN and DIFF are
    (b, h, c, Q) fp32, atomically added. Grid (b * nchunks * g * NSPLIT, Q // BI, Q // BJ): with NSPLIT > 1
    each program takes 1/NSPLIT of the group's heads and adds its tile into a zeroed OUT (CBIN != OUT);
    with NSPLIT == 1 OUT may be CBIN (each tile is read before it is overwritten). FACTOR: off-diagonal
    tiles take exp(a_i - a_j) = exp(a_i - a_r) exp(a_r - a_j), a_r = a at the i block's first token."""
    pid0, pi, pj = _pids(Q // BI, Q // BJ, SWZ)
    pid0 = pid0.to(tl.int64)
    pid = pid0 // NSPLIT
    split = pid0 % NSPLIT
    g = pid % ngroups
    bc = pid // ngroups
    nchunks = tl.cdiv(seqlen, Q)
    c = bc % nchunks
    b = bc // nchunks
    bc = bc.to(tl.int64)  # offsets of large tensors need 64 bits
    b = b.to(tl.int64)
    offs_i = pi * BI + tl.arange(0, BI)
    offs_j = pj * BJ + tl.arange(0, BJ)
    acc = tl.zeros((BI, BJ), dtype=tl.float32)
    if pj * BJ <= pi * BI + BI - 1:
        t0 = c * Q
        ti = t0 + offs_i
        tj = t0 + offs_j
        mi = ti < seqlen
        mj = tj < seqlen
        keep = (offs_i[:, None] >= offs_j[None, :]) & mi[:, None] & mj[None, :]
        if HAS_SEQ:
            seq_i = tl.load(SEQ + b * s_seq_b + ti * s_seq_l, mask=mi, other=-1)
            seq_j = tl.load(SEQ + b * s_seq_b + tj * s_seq_l, mask=mj, other=-2)
            keep &= seq_i[:, None] == seq_j[None, :]
        if STABLE_DA:
            cb = tl.load(CBIN + pid * Q * Q + offs_i[:, None] * Q + offs_j[None, :]).to(tl.float32)
            cb = tl.where(keep, cb, 0.0)
        if STABLE_DA:
            cbk = cb
        else:
            cbk = keep  # unused
        if FACTOR:
            if pj < pi:  # off-diagonal tile: the loop without a branch inside (it gets pipelined)
                acc = _dcb_heads(X, DY, DT, DA, DDA_IN, DIFF, cbk, keep, b, c, g, pi, pj, split, ti, tj, mi, mj,
                                 offs_i, offs_j, nheads, ngroups, nchunks, headdim, s_x_b, s_x_l, s_x_h, s_x_p,
                                 STABLE_DA, IEEE, NSPLIT, Q, BI, BJ, BK, True, ONE_K, 1, TRIDOT)
            else:
                acc = _dcb_heads(X, DY, DT, DA, DDA_IN, DIFF, cbk, keep, b, c, g, pi, pj, split, ti, tj, mi, mj,
                                 offs_i, offs_j, nheads, ngroups, nchunks, headdim, s_x_b, s_x_l, s_x_h, s_x_p,
                                 STABLE_DA, IEEE, NSPLIT, Q, BI, BJ, BK, False, ONE_K, 2, TRIDOT)
        else:
            acc = _dcb_heads(X, DY, DT, DA, DDA_IN, DIFF, cbk, keep, b, c, g, pi, pj, split, ti, tj, mi, mj,
                             offs_i, offs_j, nheads, ngroups, nchunks, headdim, s_x_b, s_x_l, s_x_h, s_x_p,
                             STABLE_DA, IEEE, NSPLIT, Q, BI, BJ, BK, False, ONE_K, 0, TRIDOT)
    if NSPLIT == 1:
        tl.store(OUT + pid * Q * Q + offs_i[:, None] * Q + offs_j[None, :], acc)
    elif pj * BJ <= pi * BI + BI - 1:
        tl.atomic_add(OUT + pid * Q * Q + offs_i[:, None] * Q + offs_j[None, :], acc)


@triton.jit
def bwd_bc_state_kernel(
    X, DY, CM, DT, DA, SPREV, DS, SEQ, DC, DB, DDA, BM, DCB,
    seqlen, nheads, ngroups, headdim, dstate,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_seq_b, s_seq_l,
    HAS_SEQ: tl.constexpr, IEEE: tl.constexpr, NSPLIT: tl.constexpr,
    Q: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr, FUSE_CB: tl.constexpr = False,
    ONE_K: tl.constexpr = False, SWZ: tl.constexpr = False,
):
    """State parts of dC and dB for a block of tokens, summed over the heads of the group:
    DC[t] = sum_h exp(a_t) dy_t S_c,  DB[t] = sum_h exp(a_last - a_t) dt_t x_t ds_c.
    Also DDA[t] += exp(a_t) dy_t·(S_c C_t) per head (the incoming state's log-decay gradient; partial
    over n blocks). Grid (b * nchunks * g, Q // BT, cdiv(n, BN) * NSPLIT). DC, DB fp32 (b, nchunks*Q, g, n),
    zeroed and atomically added when NSPLIT > 1 (each program then takes 1/NSPLIT of the group's heads).
    FUSE_CB (NSPLIT == 1 only): also the intra-chunk parts DC[t] += sum_{j<=t} dCB_tj B_j and
    DB[t] += sum_{i>=t} dCB_it C_i (DCB (b, c, g, Q, Q), B = BM, sharing C's strides); DC, DB are then the
    final (b, l, g, n) gradients in their own dtype."""
    pid, pt, pz = _pids(Q // BT, tl.cdiv(dstate, BN) * NSPLIT, SWZ)
    pn = pz % tl.cdiv(dstate, BN)
    split = pz // tl.cdiv(dstate, BN)
    g = pid % ngroups
    bc = pid // ngroups
    nchunks = tl.cdiv(seqlen, Q)
    c = bc % nchunks
    b = bc // nchunks
    bc = bc.to(tl.int64)  # offsets of large tensors need 64 bits
    b = b.to(tl.int64)
    t0 = c * Q
    offs_t = pt * BT + tl.arange(0, BT)
    tt = t0 + offs_t
    mt = tt < seqlen
    offs_n = pn * BN + tl.arange(0, BN)
    mn = offs_n < dstate
    keep_c = mt
    keep_b = mt
    if HAS_SEQ:
        seq_t = tl.load(SEQ + b * s_seq_b + tt * s_seq_l, mask=mt, other=-1)
        seq_prev = tl.load(SEQ + b * s_seq_b + tl.maximum(t0 - 1, 0) * s_seq_l)
        seq_last = tl.load(SEQ + b * s_seq_b + (tl.minimum(t0 + Q, seqlen) - 1) * s_seq_l)
        keep_c &= seq_t == seq_prev
        keep_b &= seq_t == seq_last
    acc_c = tl.zeros((BT, BN), dtype=tl.float32)
    acc_b = tl.zeros((BT, BN), dtype=tl.float32)
    ct = tl.load(CM + b * s_c_b + g * s_c_g + tt[:, None] * s_c_l + offs_n[None, :] * s_c_n,
                 mask=mt[:, None] & mn[None, :], other=0.0).to(tl.float32)
    hpg = nheads // ngroups
    hps = hpg // NSPLIT
    for hh in range(split * hps, split * hps + hps):
        h = g * hpg + hh
        da_base = ((b * nheads + h) * nchunks + c) * Q
        a_t = tl.load(DA + da_base + offs_t)
        dt_t = tl.load(DT + da_base + offs_t)
        a_last = tl.load(DA + da_base + Q - 1)
        wc = tl.where(keep_c, tl.exp(a_t), 0.0)
        wb = tl.where(keep_b, tl.exp(a_last - a_t) * dt_t, 0.0)
        st_base = (bc * nheads + h) * headdim * dstate
        if ONE_K:  # headdim <= BP: no inner loop, so the head loop is the pipelined one
            offs_p = tl.arange(0, BP)
            mp = offs_p < headdim
            off = b * s_x_b + h * s_x_h + tt[:, None] * s_x_l + offs_p[None, :] * s_x_p
            dyt = tl.load(DY + off, mask=mt[:, None] & mp[None, :], other=0.0)
            xt = tl.load(X + off, mask=mt[:, None] & mp[None, :], other=0.0)
            sp = tl.load(SPREV + st_base + offs_p[:, None] * dstate + offs_n[None, :],
                         mask=mp[:, None] & mn[None, :], other=0.0)
            ds = tl.load(DS + st_base + offs_p[:, None] * dstate + offs_n[None, :],
                         mask=mp[:, None] & mn[None, :], other=0.0)
            pc = _dot(dyt, sp.to(dyt.dtype), IEEE)
            pb = _dot(xt, ds.to(xt.dtype), IEEE)
        else:
            pc = tl.zeros((BT, BN), dtype=tl.float32)
            pb = tl.zeros((BT, BN), dtype=tl.float32)
            for k in range(0, headdim, BP):
                offs_p = k + tl.arange(0, BP)
                mp = offs_p < headdim
                off = b * s_x_b + h * s_x_h + tt[:, None] * s_x_l + offs_p[None, :] * s_x_p
                dyt = tl.load(DY + off, mask=mt[:, None] & mp[None, :], other=0.0)
                xt = tl.load(X + off, mask=mt[:, None] & mp[None, :], other=0.0)
                sp = tl.load(SPREV + st_base + offs_p[:, None] * dstate + offs_n[None, :],
                             mask=mp[:, None] & mn[None, :], other=0.0)
                ds = tl.load(DS + st_base + offs_p[:, None] * dstate + offs_n[None, :],
                             mask=mp[:, None] & mn[None, :], other=0.0)
                pc += _dot(dyt, sp.to(dyt.dtype), IEEE)
                pb += _dot(xt, ds.to(xt.dtype), IEEE)
        pc = pc * wc[:, None]
        acc_c += pc
        acc_b += pb * wb[:, None]
        tl.atomic_add(DDA + da_base + offs_t, tl.sum(pc * ct, axis=1), mask=mt)
    if FUSE_CB:
        dcbb = DCB + (bc * ngroups + g) * Q * Q
        cbase = b * s_c_b + g * s_c_g
        for k in range(0, pt * BT + BT, BT):  # dC_t += sum_{j<=t} dCB_tj B_j
            offs_j = k + tl.arange(0, BT)
            tj = t0 + offs_j
            bj = tl.load(BM + cbase + tj[:, None] * s_c_l + offs_n[None, :] * s_c_n,
                         mask=(tj[:, None] < seqlen) & mn[None, :], other=0.0)
            d = tl.load(dcbb + offs_t[:, None] * Q + offs_j[None, :])
            acc_c += _dot(d.to(bj.dtype), bj, IEEE)
        for k in range(pt * BT, Q, BT):  # dB_t += sum_{i>=t} dCB_it C_i
            offs_i = k + tl.arange(0, BT)
            ti = t0 + offs_i
            ci = tl.load(CM + cbase + ti[:, None] * s_c_l + offs_n[None, :] * s_c_n,
                         mask=(ti[:, None] < seqlen) & mn[None, :], other=0.0)
            d = tl.load(dcbb + offs_i[None, :] * Q + offs_t[:, None])
            acc_b += _dot(d.to(ci.dtype), ci, IEEE)
        out = ((b * seqlen + tt[:, None]) * ngroups + g) * dstate + offs_n[None, :]
    else:
        out = ((b * nchunks * Q + tt[:, None]) * ngroups + g) * dstate + offs_n[None, :]
    if NSPLIT == 1:
        tl.store(DC + out, acc_c.to(DC.dtype.element_ty), mask=mt[:, None] & mn[None, :])
        tl.store(DB + out, acc_b.to(DB.dtype.element_ty), mask=mt[:, None] & mn[None, :])
    else:
        tl.atomic_add(DC + out, acc_c, mask=mt[:, None] & mn[None, :])
        tl.atomic_add(DB + out, acc_b, mask=mt[:, None] & mn[None, :])


# ----------------------------------------------------------------------------------------------------------
# decode
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def ssd_step_kernel(
    STATE, X, DT, A, BM, CM, DPTR, Z, BIAS, Y, NEW,
    nheads, ngroups, headdim, dstate,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
):
    """One token: S' = exp(dt A) S + dt x Bᵀ, y = S' C + D x, y *= silu(z). All inputs contiguous:
    STATE/NEW (b, h, p, n), X/Z/Y (b, h, p), DT (b, h), B/C (b, g, n). Grid (b * h, cdiv(p, BP)).
    NEW may alias STATE (in-place update)."""
    pid = tl.program_id(0).to(tl.int64)
    pp = tl.program_id(1)
    h = pid % nheads
    b = pid // nheads
    g = h // (nheads // ngroups)
    offs_p = pp * BP + tl.arange(0, BP)
    mp = offs_p < headdim
    offs_n = tl.arange(0, BN)
    mn = offs_n < dstate
    dt = tl.load(DT + pid).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(BIAS + h).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    decay = tl.exp(dt * tl.load(A + h).to(tl.float32))
    x = tl.load(X + pid * headdim + offs_p, mask=mp, other=0.0).to(tl.float32)
    bv = tl.load(BM + (b * ngroups + g) * dstate + offs_n, mask=mn, other=0.0).to(tl.float32)
    cv = tl.load(CM + (b * ngroups + g) * dstate + offs_n, mask=mn, other=0.0).to(tl.float32)
    so = pid * headdim * dstate + offs_p[:, None] * dstate + offs_n[None, :]
    ms = mp[:, None] & mn[None, :]
    s = tl.load(STATE + so, mask=ms, other=0.0).to(tl.float32)
    s = s * decay + (dt * x)[:, None] * bv[None, :]
    tl.store(NEW + so, s, mask=ms)
    y = tl.sum(s * cv[None, :], axis=1)
    if HAS_D:
        if D_PER_P:
            y += x * tl.load(DPTR + h * headdim + offs_p, mask=mp, other=0.0).to(tl.float32)
        else:
            y += x * tl.load(DPTR + h).to(tl.float32)
    if HAS_Z:
        zz = tl.load(Z + pid * headdim + offs_p, mask=mp, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(Y + pid * headdim + offs_p, y, mask=mp)
