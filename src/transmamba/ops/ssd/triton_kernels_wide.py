# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Head-blocked ("wide") Triton kernels of the chunked SSD: one program takes NH heads of one group, so the
group's C·B tile (and its C or B rows) is loaded once for all NH heads and the off-diagonal products are
single dots NH·BP columns wide. Launchers in `ssd.py` (CONFIG misc.wide = NH), notation in `ssd_kernels.py`.

    chunk_scan_wide_kernel   y_i = exp(a_i) C_i S_c + sum_{j<=i} CB_ij exp(a_i - a_j) dt_j x_j + D x_i,
                             for NH heads h (a, dt, x, S per head; C, CB per group)
    bwd_dx_wide_kernel       dx_j = dt_j (sum_{i>=j} CB_ij exp(a_i - a_j) dy_i + exp(a_last - a_j) ds_c B_j)
                             + D dy_j, with the ddt / da partials of bwd_dx_kernel (no intra-chunk dA: that
                             stays in bwd_dcb_kernel, misc.dda_in_dx = 0)

Layout: the NH heads' tiles are (rows, NH, BP) tensors, reshaped to (rows, NH·BP) for the dots. Blocks of
C·B strictly off the diagonal use the factorised decay exp(a_i - a_j) = exp(a_i - a_r) exp(a_r - a_j)
(a_r at the block boundary, both factors <= 1 when dt A <= 0), which is per head but rank one, so it scales
the wide operand and the wide result and C·B is shared. The diagonal block needs the 2-D exp per head: one
dot per head against the wide operand with the other heads' columns zeroed (NH times the diagonal block's
MMA work, no extra loads).
"""

from __future__ import annotations

import triton
import triton.language as tl

from transmamba.ops.ssd.triton_kernels import _dot, _pids


@triton.jit
def chunk_scan_wide_kernel(
    X, CM, CB, DT, DA, SPREV, SEQ, DPTR, Z, Y, YPRE,
    seqlen, nheads, ngroups, headdim, dstate,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_seq_b, s_seq_l,
    HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr,
    IEEE: tl.constexpr, Q: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, NH: tl.constexpr, SWZ: tl.constexpr = False,
):
    """chunk_scan_kernel (FACTOR) for NH heads per program (NH divides the heads per group). YPRE = y,
    Y = y silu(z) when HAS_Z. Grid (b * nchunks * h / NH, Q // BM, cdiv(p, BP)); BN >= dstate."""
    pid, pm, pp = _pids(Q // BM, tl.cdiv(headdim, BP), SWZ)
    nhb = nheads // NH
    hb = pid % nhb
    bc = pid // nhb
    nchunks = tl.cdiv(seqlen, Q)
    c = bc % nchunks
    b = bc // nchunks
    bc = bc.to(tl.int64)  # offsets of large tensors need 64 bits
    b = b.to(tl.int64)
    h0 = hb * NH
    g = h0 // (nheads // ngroups)
    W: tl.constexpr = NH * BP
    t0 = c * Q
    offs_m = pm * BM + tl.arange(0, BM)
    tm = t0 + offs_m
    mm = tm < seqlen
    offs_h = tl.arange(0, NH)
    offs_p = pp * BP + tl.arange(0, BP)
    mp = offs_p < headdim
    offs_n = tl.arange(0, BN)
    mn = offs_n < dstate
    da_h = ((b * nheads + h0 + offs_h) * nchunks + c) * Q  # (NH,)
    a_m = tl.load(DA + da_h[None, :] + offs_m[:, None])  # (BM, NH)
    if HAS_SEQ:
        seq_m = tl.load(SEQ + b * s_seq_b + tm * s_seq_l, mask=mm, other=-1)
    xb = X + b * s_x_b + (h0 + offs_h)[None, :, None] * s_x_h + offs_p[None, None, :] * s_x_p
    cbb = CB + (bc * ngroups + g) * Q * Q
    # blocks strictly before the row block: factorised decay, C·B shared by the NH heads
    a_r = tl.load(DA + da_h + pm * BM)  # (NH,)
    acc2 = tl.zeros((BM, W), dtype=tl.float32)
    for k in range(0, pm * BM, BK):
        offs_k = k + tl.arange(0, BK)
        tk = t0 + offs_k
        mk = tk < seqlen
        xk = tl.load(xb + tk[:, None, None] * s_x_l, mask=mk[:, None, None] & mp[None, None, :], other=0.0)  # (BK, NH, BP)
        cb = tl.load(cbb + offs_m[:, None] * Q + offs_k[None, :])  # (BM, BK)
        if HAS_SEQ:
            seq_k = tl.load(SEQ + b * s_seq_b + tk * s_seq_l, mask=mk, other=-2)
            cb = tl.where(seq_m[:, None] == seq_k[None, :], cb, 0.0)
        wk = tl.exp(a_r[None, :] - tl.load(DA + da_h[None, :] + offs_k[:, None])) * tl.load(DT + da_h[None, :] + offs_k[:, None])  # (BK, NH)
        xw = tl.reshape((xk.to(tl.float32) * wk[:, :, None]).to(xk.dtype), (BK, W))
        acc2 += _dot(cb.to(xk.dtype), xw, IEEE)
    acc = tl.reshape(acc2, (BM, NH, BP)) * tl.exp(a_m - a_r[None, :])[:, :, None]
    # the diagonal block: 2-D decay per head
    accd = tl.zeros((BM, W), dtype=tl.float32)
    for k in range(pm * BM, (pm + 1) * BM, BK):
        offs_k = k + tl.arange(0, BK)
        tk = t0 + offs_k
        mk = tk < seqlen
        cb = tl.load(cbb + offs_m[:, None] * Q + offs_k[None, :]).to(tl.float32)  # (BM, BK)
        keep = offs_m[:, None] >= offs_k[None, :]
        if HAS_SEQ:
            seq_k = tl.load(SEQ + b * s_seq_b + tk * s_seq_l, mask=mk, other=-2)
            keep &= seq_m[:, None] == seq_k[None, :]
        xk = tl.load(xb + tk[:, None, None] * s_x_l, mask=mk[:, None, None] & mp[None, None, :], other=0.0)  # (BK, NH, BP)
        for hh in tl.static_range(NH):
            da_hh = ((b * nheads + h0 + hh) * nchunks + c) * Q
            a_mh = tl.load(DA + da_hh + offs_m)
            a_k = tl.load(DA + da_hh + offs_k)
            dt_k = tl.load(DT + da_hh + offs_k)
            w = tl.where(keep, cb * tl.exp(tl.where(keep, a_mh[:, None] - a_k[None, :], 0.0)) * dt_k[None, :], 0.0)
            xh = tl.reshape(tl.where(offs_h[None, :, None] == hh, xk, 0.0), (BK, W))
            accd += _dot(w.to(xk.dtype), xh, IEEE)
    acc += tl.reshape(accd, (BM, NH, BP))
    # incoming state, read through C: (BM, BN) @ (BN, NH*BP)
    cm = tl.load(CM + b * s_c_b + g * s_c_g + tm[:, None] * s_c_l + offs_n[None, :] * s_c_n,
                 mask=mm[:, None] & mn[None, :], other=0.0)
    sz = headdim * dstate
    sp = tl.load(SPREV + (bc * nheads + h0) * sz + offs_h[None, :, None] * sz + offs_p[None, None, :] * dstate + offs_n[:, None, None],
                 mask=mp[None, None, :] & mn[:, None, None], other=0.0)  # (BN, NH, BP) = S_cᵀ per head
    w_state = tl.exp(a_m)
    if HAS_SEQ:
        seq_prev = tl.load(SEQ + b * s_seq_b + tl.maximum(t0 - 1, 0) * s_seq_l)
        w_state = tl.where((seq_m == seq_prev)[:, None], w_state, 0.0)
    acc += tl.reshape(_dot(cm, tl.reshape(sp.to(cm.dtype), (BN, W)), IEEE), (BM, NH, BP)) * w_state[:, :, None]
    off_out = b * s_x_b + tm[:, None, None] * s_x_l + (h0 + offs_h)[None, :, None] * s_x_h + offs_p[None, None, :] * s_x_p
    mo = mm[:, None, None] & mp[None, None, :]
    if HAS_D:
        xm = tl.load(X + off_out, mask=mo, other=0.0).to(tl.float32)
        if D_PER_P:
            d = tl.load(DPTR + (h0 + offs_h)[:, None] * headdim + offs_p[None, :], mask=mp[None, :], other=0.0).to(tl.float32)
            acc += xm * d[None, :, :]
        else:
            acc += xm * tl.load(DPTR + h0 + offs_h).to(tl.float32)[None, :, None]
    if HAS_Z:
        tl.store(YPRE + off_out, acc, mask=mo)
        zz = tl.load(Z + off_out, mask=mo, other=0.0).to(tl.float32)
        acc = acc * zz * tl.sigmoid(zz)
    tl.store(Y + off_out, acc, mask=mo)


@triton.jit
def bwd_dx_wide_kernel(
    X, DY, BM, CB, DT, DA, DS, SEQ, DPTR,
    DX, DDT, DDA, DD,
    seqlen, nheads, ngroups, headdim, dstate,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_seq_b, s_seq_l,
    HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr,
    IEEE: tl.constexpr, Q: tl.constexpr, BJ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, NH: tl.constexpr, SWZ: tl.constexpr = False,
):
    """bwd_dx_kernel (FACTOR, no STABLE_DA) for NH heads per program: for tokens j of a block, per head
        acc_j = sum_{i>=j} CB_ij exp(a_i - a_j) dy_i,  z_j = exp(a_last - a_j) ds_c B_j,
        DX_j = dt_j (acc_j + z_j) + D dy_j,  DDT_j += x_j·acc_j + x_j·z_j,  DDA_j -= dt_j x_j·z_j,
        DDA_last += sum_j dt_j x_j·z_j,  DD[b, c, h, pj, p] = sum_j dy_j x_j.
    DDT, DDA (b, h, c, Q) fp32 (atomics over p blocks). Grid (b * nchunks * h / NH, Q // BJ, cdiv(p, BP))."""
    pid, pj, pp = _pids(Q // BJ, tl.cdiv(headdim, BP), SWZ)
    nhb = nheads // NH
    hb = pid % nhb
    bc = pid // nhb
    nchunks = tl.cdiv(seqlen, Q)
    c = bc % nchunks
    b = bc // nchunks
    bc = bc.to(tl.int64)  # offsets of large tensors need 64 bits
    b = b.to(tl.int64)
    h0 = hb * NH
    g = h0 // (nheads // ngroups)
    W: tl.constexpr = NH * BP
    t0 = c * Q
    offs_j = pj * BJ + tl.arange(0, BJ)
    tj = t0 + offs_j
    mj = tj < seqlen
    offs_h = tl.arange(0, NH)
    offs_p = pp * BP + tl.arange(0, BP)
    mp = offs_p < headdim
    offs_n = tl.arange(0, BN)
    mn = offs_n < dstate
    da_h = ((b * nheads + h0 + offs_h) * nchunks + c) * Q  # (NH,)
    a_j = tl.load(DA + da_h[None, :] + offs_j[:, None])  # (BJ, NH)
    dt_j = tl.load(DT + da_h[None, :] + offs_j[:, None])
    a_last = tl.load(DA + da_h + Q - 1)  # (NH,)
    if HAS_SEQ:
        seq_j = tl.load(SEQ + b * s_seq_b + tj * s_seq_l, mask=mj, other=-1)
        seq_last = tl.load(SEQ + b * s_seq_b + (tl.minimum(t0 + Q, seqlen) - 1) * s_seq_l)
    yb = DY + b * s_x_b + (h0 + offs_h)[None, :, None] * s_x_h + offs_p[None, None, :] * s_x_p
    cbb = CB + (bc * ngroups + g) * Q * Q
    # row blocks after the j block: factorised decay, a_r = a at the j block's last token
    a_r = tl.load(DA + da_h + pj * BJ + BJ - 1)  # (NH,)
    acc2 = tl.zeros((BJ, W), dtype=tl.float32)
    for k in range(pj * BJ + BJ, Q, BK):
        offs_i = k + tl.arange(0, BK)
        ti = t0 + offs_i
        mi = ti < seqlen
        dyi = tl.load(yb + ti[:, None, None] * s_x_l, mask=mi[:, None, None] & mp[None, None, :], other=0.0)  # (BK, NH, BP)
        cb = tl.load(cbb + offs_i[:, None] * Q + offs_j[None, :])  # (BK, BJ), rows i
        if HAS_SEQ:
            seq_i = tl.load(SEQ + b * s_seq_b + ti * s_seq_l, mask=mi, other=-2)
            cb = tl.where(seq_i[:, None] == seq_j[None, :], cb, 0.0)
        wi = tl.exp(tl.load(DA + da_h[None, :] + offs_i[:, None]) - a_r[None, :])  # (BK, NH)
        dyw = tl.reshape((dyi.to(tl.float32) * wi[:, :, None]).to(dyi.dtype), (BK, W))
        acc2 += _dot(tl.trans(cb.to(dyi.dtype)), dyw, IEEE)
    acc = tl.reshape(acc2, (BJ, NH, BP)) * tl.exp(a_r[None, :] - a_j)[:, :, None]
    # the diagonal block: 2-D decay per head
    accd = tl.zeros((BJ, W), dtype=tl.float32)
    for k in range(pj * BJ, pj * BJ + BJ, BK):
        offs_i = k + tl.arange(0, BK)
        ti = t0 + offs_i
        mi = ti < seqlen
        cb = tl.load(cbb + offs_i[:, None] * Q + offs_j[None, :]).to(tl.float32)  # (BK, BJ), rows i
        keep = (offs_i[:, None] >= offs_j[None, :]) & mi[:, None]
        if HAS_SEQ:
            seq_i = tl.load(SEQ + b * s_seq_b + ti * s_seq_l, mask=mi, other=-2)
            keep &= seq_i[:, None] == seq_j[None, :]
        dyi = tl.load(yb + ti[:, None, None] * s_x_l, mask=mi[:, None, None] & mp[None, None, :], other=0.0)  # (BK, NH, BP)
        for hh in tl.static_range(NH):
            da_hh = ((b * nheads + h0 + hh) * nchunks + c) * Q
            a_i = tl.load(DA + da_hh + offs_i)
            a_jh = tl.load(DA + da_hh + offs_j)
            w = tl.where(keep, cb * tl.exp(tl.where(keep, a_i[:, None] - a_jh[None, :], 0.0)), 0.0)
            dyh = tl.reshape(tl.where(offs_h[None, :, None] == hh, dyi, 0.0), (BK, W))
            accd += _dot(tl.trans(w.to(dyi.dtype)), dyh, IEEE)
    acc += tl.reshape(accd, (BJ, NH, BP))
    off_j = b * s_x_b + tj[:, None, None] * s_x_l + (h0 + offs_h)[None, :, None] * s_x_h + offs_p[None, None, :] * s_x_p
    mo = mj[:, None, None] & mp[None, None, :]
    xj = tl.load(X + off_j, mask=mo, other=0.0).to(tl.float32)  # (BJ, NH, BP)
    r = tl.sum(acc * xj, axis=2)  # (BJ, NH) ddt intra part (partial over p)
    # chunk-state part: z[j, h, p] = exp(a_last - a_j) (ds B_j)[p]
    bj = tl.load(BM + b * s_b_b + g * s_b_g + tj[:, None] * s_b_l + offs_n[None, :] * s_b_n,
                 mask=mj[:, None] & mn[None, :], other=0.0)  # (BJ, BN)
    sz = headdim * dstate
    ds = tl.load(DS + (bc * nheads + h0) * sz + offs_h[None, :, None] * sz + offs_p[None, None, :] * dstate + offs_n[:, None, None],
                 mask=mp[None, None, :] & mn[:, None, None], other=0.0)  # (BN, NH, BP) = dsᵀ per head
    wz = tl.exp(a_last[None, :] - a_j)  # (BJ, NH)
    if HAS_SEQ:
        wz = tl.where((seq_j == seq_last)[:, None], wz, 0.0)
    wz = tl.where(mj[:, None], wz, 0.0)
    zs = tl.reshape(_dot(bj, tl.reshape(ds.to(bj.dtype), (BN, W)), IEEE), (BJ, NH, BP)) * wz[:, :, None]
    q = tl.sum(zs * xj, axis=2)  # (BJ, NH)
    dx = (acc + zs) * dt_j[:, :, None]
    dyj = tl.load(DY + off_j, mask=mo, other=0.0).to(tl.float32)
    if HAS_D:
        if D_PER_P:
            d = tl.load(DPTR + (h0 + offs_h)[:, None] * headdim + offs_p[None, :], mask=mp[None, :], other=0.0).to(tl.float32)[None, :, :]
        else:
            d = tl.load(DPTR + h0 + offs_h).to(tl.float32)[None, :, None]
        dx += dyj * d
        tl.store(DD + ((bc * nheads + h0 + offs_h[:, None]) * (Q // BJ) + pj) * headdim + offs_p[None, :],
                 tl.sum(dyj * xj, axis=0), mask=mp[None, :])
    tl.store(DX + off_j, dx, mask=mo)
    mjh = mj[:, None] & (offs_h[None, :] < NH)
    tl.atomic_add(DDT + da_h[None, :] + offs_j[:, None], r + q, mask=mjh)
    tl.atomic_add(DDA + da_h[None, :] + offs_j[:, None], -dt_j * q, mask=mjh)
    tl.atomic_add(DDA + da_h + Q - 1, tl.sum(dt_j * q, axis=0))
