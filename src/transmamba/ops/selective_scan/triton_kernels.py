# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Triton kernels of Mamba-1's selective scan (S6): forward, backward and the decode step. Launchers are in
`triton.py`.

Per batch row, channel d, state index n, token t (Δ_t = softplus(delta_t + bias) or delta_t + bias):

    a_t = exp(Δ_t A[d, n]) · keep_t          keep_t = 0 where a new document starts (seq_idx), else 1
    b_t = Δ_t u_t B_t[n]
    h_t = a_t h_{t-1} + b_t                  h_{-1} = initial state (or 0)
    y_t = Σ_n C_t[n] h_t[n] + D u_t,         out_t = y_t · silu(z_t)

One program owns (batch row, BD channels, time segment) and walks time in tiles of TT tokens; the state h
(BD, N) stays in registers. Inside a tile the recurrence is one `tl.associative_scan` over time on (TT, N, BD)
tensors of affine maps x -> a x + b: (a1, b1) then (a2, b2) composes to (a1 a2, b1 a2 + b2). The tiles are
n-major, BD fastest: Triton's default layout puts BD on min(BD, 32) lanes and the rest of the warp on n,
so each thread holds several n of one channel and the sums over n (y, du, ddelta) run mostly inside a
thread (BD = 8: 4 n per thread, 2 shuffle rounds). The entering state (forward) and the carry (backward)
are folded into the first / last token of a tile. The state entering every tile is written out (CKPT,
fp32, N/TT values per token and channel) so the backward can restart any tile.

Few rows and long sequences leave too few programs; time is then also split into segments: a state-only
pass gives each segment's map h -> P h + H from a zero state, a small sequential pass over the segments
(`seg_pass_kernel`) gives the state entering each, and the full pass runs all segments in parallel from
those. The backward does the same right to left for dL/dh (a carry-only reverse pass).

Backward (dout given; g_t = dL/dh_t, G = dL/dh_final):

    dy_t   = dout_t · silu(z_t),   dz_t = dout_t · y_t · silu'(z_t),   silu'(z) = σ(z) (1 + z (1 - σ(z)))
    g_t    = C_t dy_t + a_{t+1} g_{t+1},    g_{L-1} = C_{L-1} dy_{L-1} + G   (a reverse scan per tile; the
             carry between tiles is g at the tile's first token, multiplied by a_{t+1} loaded at t + 1)
    r_t    = g_t (h_t - b_t) = g_t a_t h_{t-1}                   gradient w.r.t. the log decay Δ_t A
    du_t   = Δ_t Σ_n g_t B_t + D dy_t
    dΔ_t   = Σ_n A r_t + u_t Σ_n g_t B_t;   ddelta_t = dΔ_t · σ(delta_t + bias) with softplus (else dΔ_t)
    dA     = Σ_{b,t} Δ_t r_t;   dD = Σ_{b,t} dy_t u_t;   dbias = Σ_{b,t} ddelta_t;   dinit = a_0 g_0
    dB_t   = Σ_{d of the group} g_t Δ_t u_t;   dC_t = Σ_{d of the group} dy_t h_t      (atomic adds, fp32)

Each backward program walks its tiles in reverse, recomputing the tile's states from the checkpoint with the
same forward scan; dA, dD, dbias come out as per-(row, channel) partial sums, reduced in torch.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _compose(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2) for affine maps x -> a x + b (scan order: earlier first)."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _delta(raw, bias, SOFTPLUS: tl.constexpr):
    v = raw + bias
    if SOFTPLUS:
        v = tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))
    return v


@triton.jit
def seg_pass_kernel(
    P, H, INIT, E, size, nseg,
    HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, BS: tl.constexpr,
):
    """Carry states across segments. P, H, E (b, nseg, size), INIT (b, size), all fp32; grid (b, cdiv(size, BS)).
    Forward: E_0 = INIT (or 0), E_{s+1} = P_s E_s + H_s. REVERSE: E_{nseg-1} = INIT (or 0),
    E_{s-1} = P_s E_s + H_s."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BS + tl.arange(0, BS)
    mask = offs < size
    if HAS_INIT:
        e = tl.load(INIT + pid_b * size + offs, mask=mask, other=0.0)
    else:
        e = tl.zeros([BS], dtype=tl.float32)
    for k in range(0, nseg):
        s = nseg - 1 - k if REVERSE else k
        o = (pid_b * nseg + s) * size + offs
        tl.store(E + o, e, mask=mask)
        e = tl.load(P + o, mask=mask, other=0.0) * e + tl.load(H + o, mask=mask, other=0.0)


@triton.jit
def scan_step_kernel(
    STATE, X, DT, A, BM, CM, DPTR, Z, BIAS, Y, NEW,
    dim, dstate, dpg,
    s_s_b, s_s_d, s_s_n, s_x_b, s_dt_b, s_b_b, s_b_g, s_c_b, s_c_g, s_z_b, s_n_b, s_n_d, s_n_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BD: tl.constexpr, BN: tl.constexpr,
):
    """One token: h' = exp(Δ A) h + Δ x B, y = Σ_n C h' + D x, y *= silu(z). Grid (b, cdiv(dim, BD)).
    STATE/NEW (b, dim, n) with strides (NEW may alias STATE), X/DT/Z/Y (b, dim) unit stride in dim (Y
    contiguous), B/C (b, g, n) unit stride in n."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, BN)
    mask_n = offs_n < dstate
    md_n = mask_d[:, None] & mask_n[None, :]
    dt = tl.load(DT + pid_b * s_dt_b + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(BIAS + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    x = tl.load(X + pid_b * s_x_b + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    A_blk = tl.load(A + offs_d[:, None] * dstate + offs_n[None, :], mask=md_n, other=0.0).to(tl.float32)
    grp = offs_d // dpg
    bv = tl.load(BM + pid_b * s_b_b + grp[:, None] * s_b_g + offs_n[None, :], mask=md_n, other=0.0).to(tl.float32)
    cv = tl.load(CM + pid_b * s_c_b + grp[:, None] * s_c_g + offs_n[None, :], mask=md_n, other=0.0).to(tl.float32)
    s = tl.load(STATE + pid_b * s_s_b + offs_d[:, None] * s_s_d + offs_n[None, :] * s_s_n, mask=md_n, other=0.0).to(tl.float32)
    s = tl.exp(dt[:, None] * A_blk) * s + (dt * x)[:, None] * bv
    tl.store(NEW + pid_b * s_n_b + offs_d[:, None] * s_n_d + offs_n[None, :] * s_n_n, s.to(NEW.dtype.element_ty), mask=md_n)
    y = tl.sum(s * cv, axis=1)
    if HAS_D:
        y += x * tl.load(DPTR + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(Z + pid_b * s_z_b + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(Y + pid_b * dim + offs_d, y.to(Y.dtype.element_ty), mask=mask_d)


LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _tile_inputs(
    U, DELTA, BM, SEQ, pid_b, offs_d, mask_d, t, mask_t, bias, A2, grp_off, offs_n, mask_n,
    s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_b_b, s_b_n, s_b_l, s_seq_b, s_seq_l,
    SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr, SAME_GROUP: tl.constexpr,
):
    """Load one tile and form the scan's affine maps. Returns u, Δ, raw delta (TT, BD) fp32 (0 outside), the
    decay a (TT, BN, BD), the input bx (TT, BN, BD) and B as (TT, BN, 1) or (TT, BN, BD).
    A2 = log2(e) A, (BN, BD)."""
    m2 = mask_t[:, None] & mask_d[None, :]
    u = tl.load(U + pid_b * s_u_b + t[:, None] * s_u_l + offs_d[None, :] * s_u_d, mask=m2, other=0.0).to(tl.float32)
    raw = tl.load(DELTA + pid_b * s_dl_b + t[:, None] * s_dl_l + offs_d[None, :] * s_dl_d, mask=m2, other=0.0).to(tl.float32)
    dl = tl.where(m2, _delta(raw, bias[None, :], SOFTPLUS), 0.0)
    if SAME_GROUP:
        bt = tl.load(BM + pid_b * s_b_b + grp_off + t[:, None] * s_b_l + offs_n[None, :] * s_b_n, mask=mask_t[:, None] & mask_n[None, :], other=0.0).to(tl.float32)[:, :, None]
    else:
        bt = tl.load(BM + pid_b * s_b_b + t[:, None, None] * s_b_l + offs_n[None, :, None] * s_b_n + grp_off[None, None, :],
                     mask=mask_t[:, None, None] & mask_n[None, :, None] & mask_d[None, None, :], other=0.0).to(tl.float32)
    bx = (dl * u)[:, None, :] * bt
    a = tl.exp2(dl[:, None, :] * A2[None, :, :])
    if HAS_SEQ:
        s_now = tl.load(SEQ + pid_b * s_seq_b + t * s_seq_l, mask=mask_t, other=0)
        s_prev = tl.load(SEQ + pid_b * s_seq_b + (t - 1) * s_seq_l, mask=mask_t & (t > 0), other=0)
        keep = ((s_now == s_prev) | (t == 0)).to(tl.float32)
        a = a * keep[:, None, None]
    return u, dl, raw, a, bx, bt


@triton.jit
def _raw_tile(U, DELTA, BM, CM, Z, pid_b, offs_d, mask_d, t, mask_t, grp_b, grp_c, offs_n, mask_n,
              s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_b_n, s_b_l, s_c_n, s_c_l, s_z_d, s_z_l, s_z_b,
              s_b_b, s_c_b, LOAD_CZ: tl.constexpr, HAS_Z: tl.constexpr):
    """The tile's loads in the inputs' dtypes (for PREFETCH: issued one tile ahead, converted when used):
    u, delta (TT, BD), B, C (TT, BN) of a single group, z (TT, BD)."""
    m2 = mask_t[:, None] & mask_d[None, :]
    mtn = mask_t[:, None] & mask_n[None, :]
    u = tl.load(U + pid_b * s_u_b + t[:, None] * s_u_l + offs_d[None, :] * s_u_d, mask=m2, other=0.0)
    raw = tl.load(DELTA + pid_b * s_dl_b + t[:, None] * s_dl_l + offs_d[None, :] * s_dl_d, mask=m2, other=0.0)
    bt = tl.load(BM + pid_b * s_b_b + grp_b + t[:, None] * s_b_l + offs_n[None, :] * s_b_n, mask=mtn, other=0.0)
    if LOAD_CZ:
        ct = tl.load(CM + pid_b * s_c_b + grp_c + t[:, None] * s_c_l + offs_n[None, :] * s_c_n, mask=mtn, other=0.0)
    else:
        ct = bt
    if HAS_Z and LOAD_CZ:
        zz = tl.load(Z + pid_b * s_z_b + t[:, None] * s_z_l + offs_d[None, :] * s_z_d, mask=m2, other=0.0)
    else:
        zz = u
    return u, raw, bt, ct, zz


@triton.jit
def _form_tile(SEQ, u, raw, bt, pid_b, mask_d, t, mask_t, bias, A2, s_seq_b, s_seq_l,
               SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr):
    """_tile_inputs from already-loaded tiles (single group): u, Δ, raw (TT, BD), a, bx (TT, BN, BD), B (TT, BN, 1)."""
    m2 = mask_t[:, None] & mask_d[None, :]
    u = u.to(tl.float32)
    raw = raw.to(tl.float32)
    dl = tl.where(m2, _delta(raw, bias[None, :], SOFTPLUS), 0.0)
    bt = bt.to(tl.float32)[:, :, None]
    bx = (dl * u)[:, None, :] * bt
    a = tl.exp2(dl[:, None, :] * A2[None, :, :])
    if HAS_SEQ:
        s_now = tl.load(SEQ + pid_b * s_seq_b + t * s_seq_l, mask=mask_t, other=0)
        s_prev = tl.load(SEQ + pid_b * s_seq_b + (t - 1) * s_seq_l, mask=mask_t & (t > 0), other=0)
        keep = ((s_now == s_prev) | (t == 0)).to(tl.float32)
        a = a * keep[:, None, None]
    return u, dl, raw, a, bx, bt


@triton.jit
def _load_c(CM, pid_b, grp_off, offs_n, mask_n, offs_d, mask_d, t, mask_t, s_c_b, s_c_n, s_c_l, SAME_GROUP: tl.constexpr):
    """C of one tile as (TT, BN, 1) or (TT, BN, BD)."""
    if SAME_GROUP:
        return tl.load(CM + pid_b * s_c_b + grp_off + t[:, None] * s_c_l + offs_n[None, :] * s_c_n, mask=mask_t[:, None] & mask_n[None, :], other=0.0).to(tl.float32)[:, :, None]
    else:
        return tl.load(CM + pid_b * s_c_b + t[:, None, None] * s_c_l + offs_n[None, :, None] * s_c_n + grp_off[None, None, :],
                       mask=mask_t[:, None, None] & mask_n[None, :, None] & mask_d[None, None, :], other=0.0).to(tl.float32)


@triton.jit
def _prologue(A, BIAS, DPTR, offs_d, mask_d, offs_n, mask_n, dstate, dpg, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
              SAME_GROUP: tl.constexpr, BD: tl.constexpr):
    mn_d = mask_n[:, None] & mask_d[None, :]
    A_blk = tl.load(A + offs_d[None, :] * dstate + offs_n[:, None], mask=mn_d, other=0.0).to(tl.float32)  # (BN, BD)
    if HAS_BIAS:
        bias = tl.load(BIAS + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        dskip = tl.load(DPTR + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        dskip = tl.zeros([BD], dtype=tl.float32)
    if SAME_GROUP:
        grp = (tl.program_id(1) * BD) // dpg
    else:
        grp = offs_d // dpg
    return mn_d, A_blk, bias, dskip, grp


@triton.jit
def scan_fwd_kernel(
    U, DELTA, A, BM, CM, DPTR, Z, BIAS, SEQ, H0, Y, FINAL, CKPT, SEG_P, SEG_H,
    seqlen, dim, dstate, ntiles, tps, dpg,
    s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_b_b, s_b_g, s_b_n, s_b_l, s_c_b, s_c_g, s_c_n, s_c_l,
    s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l, s_seq_b, s_seq_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr, SAME_GROUP: tl.constexpr,
    STATE_ONLY: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, TT: tl.constexpr, STAGES: tl.constexpr,
    PREFETCH: tl.constexpr = False,
):
    """Grid (b, cdiv(dim, BD), nseg); segment s covers tiles [s·tps, min((s+1)·tps, ntiles)).
    H0 (b, nseg, dim, n) fp32: the state entering each segment (HAS_H0). Y in U's layout, FINAL (b, dim, n)
    fp32 (written by the last segment), CKPT (b, ntiles, dim, n) fp32 = the state entering each tile.
    STATE_ONLY: no outputs; from a zero state, write the segment's decay product SEG_P and end state SEG_H,
    (b, nseg, dim, n), so that h_end = SEG_P · h_start + SEG_H. dpg = channels per group of B/C.
    The entering state is folded into the tile's first input (b_0 += a_0 h), so the scan's running products
    of a are dead code in the full pass. PREFETCH (needs SAME_GROUP): the next tile's loads are issued
    before the current tile's arithmetic."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    seg = tl.program_id(2)
    nseg = tl.num_programs(2)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, BN)
    mask_n = offs_n < dstate
    mn_d, A_blk, bias, dskip, grp = _prologue(A, BIAS, DPTR, offs_d, mask_d, offs_n, mask_n, dstate, dpg, HAS_BIAS,
                                              HAS_D, SAME_GROUP, BD)
    A2 = A_blk * LOG2E
    grp_b = grp * s_b_g
    grp_c = grp * s_c_g
    st_off = offs_d[None, :] * dstate + offs_n[:, None]  # (BN, BD) offsets into a (dim, n) state
    seg_off = (pid_b * nseg + seg) * dim * dstate + st_off
    if HAS_H0:
        h = tl.load(H0 + seg_off, mask=mn_d, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BN, BD], dtype=tl.float32)
    prod = tl.full([BN, BD], 1.0, dtype=tl.float32)
    t0 = tl.arange(0, TT)[:, None, None]
    it_end = tl.minimum(ntiles, (seg + 1) * tps)
    if PREFETCH:
        t = seg * tps * TT + tl.arange(0, TT)
        pu, praw, pbt, pct, pzz = _raw_tile(
            U, DELTA, BM, CM, Z, pid_b, offs_d, mask_d, t, t < seqlen, grp_b, grp_c, offs_n, mask_n,
            s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_b_n, s_b_l, s_c_n, s_c_l, s_z_d, s_z_l, s_z_b,
            s_b_b, s_c_b, not STATE_ONLY, HAS_Z)
    for it in tl.range(seg * tps, it_end, num_stages=STAGES):
        t = it * TT + tl.arange(0, TT)
        mask_t = t < seqlen
        if STORE_CKPT:
            tl.store(CKPT + (pid_b * ntiles + it) * dim * dstate + st_off, h, mask=mn_d)
        if PREFETCH:
            cu, craw, cbt, cct, czz = pu, praw, pbt, pct, pzz
            tn = t + TT
            pu, praw, pbt, pct, pzz = _raw_tile(
                U, DELTA, BM, CM, Z, pid_b, offs_d, mask_d, tn, (tn < seqlen) & (tn < it_end * TT), grp_b, grp_c,
                offs_n, mask_n, s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_b_n, s_b_l, s_c_n, s_c_l, s_z_d,
                s_z_l, s_z_b, s_b_b, s_c_b, not STATE_ONLY, HAS_Z)
            u, dl, raw, a, bx, bt = _form_tile(SEQ, cu, craw, cbt, pid_b, mask_d, t, mask_t, bias, A2, s_seq_b, s_seq_l,
                                               SOFTPLUS, HAS_SEQ)
        else:
            u, dl, raw, a, bx, bt = _tile_inputs(
                U, DELTA, BM, SEQ, pid_b, offs_d, mask_d, t, mask_t, bias, A2, grp_b, offs_n, mask_n,
                s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_b_b, s_b_n, s_b_l, s_seq_b, s_seq_l,
                SOFTPLUS, HAS_SEQ, SAME_GROUP)
        if STATE_ONLY:
            pa, pb = tl.associative_scan((a, bx), 0, _compose)
            pa_last = tl.sum(tl.where(t0 == TT - 1, pa, 0.0), axis=0)
            prod = prod * pa_last
            h = h * pa_last + tl.sum(tl.where(t0 == TT - 1, pb, 0.0), axis=0)
        else:
            bx = tl.where(t0 == 0, a * h[None, :, :] + bx, bx)  # fold the entering state into token 0
            _, hs = tl.associative_scan((a, bx), 0, _compose)  # (TT, BN, BD): every state of the tile
            if PREFETCH:
                ct = cct.to(tl.float32)[:, :, None]
            else:
                ct = _load_c(CM, pid_b, grp_c, offs_n, mask_n, offs_d, mask_d, t, mask_t, s_c_b, s_c_n, s_c_l, SAME_GROUP)
            y = tl.sum(hs * ct, axis=1)  # (TT, BD)
            h = tl.sum(tl.where(t0 == TT - 1, hs, 0.0), axis=0)  # padded tokens pass the state through (a=1, b=0)
            y += dskip[None, :] * u
            m2 = mask_t[:, None] & mask_d[None, :]
            if HAS_Z:
                if PREFETCH:
                    zz = czz.to(tl.float32)
                else:
                    zz = tl.load(Z + pid_b * s_z_b + t[:, None] * s_z_l + offs_d[None, :] * s_z_d, mask=m2, other=0.0).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            tl.store(Y + pid_b * s_y_b + t[:, None] * s_y_l + offs_d[None, :] * s_y_d, y.to(Y.dtype.element_ty), mask=m2)
    if STATE_ONLY:
        tl.store(SEG_P + seg_off, prod, mask=mn_d)
        tl.store(SEG_H + seg_off, h, mask=mn_d)
    elif seg == nseg - 1:
        tl.store(FINAL + pid_b * dim * dstate + st_off, h, mask=mn_d)


@triton.jit
def scan_bwd_kernel(
    U, DELTA, A, BM, CM, DPTR, Z, BIAS, SEQ, CKPT, DOUT, G0,
    DU, DDELTA, DZ, DBM, DCM, DA_PART, DD_PART, DBIAS_PART, DINIT, SEG_P, SEG_G,
    seqlen, dim, dstate, ntiles, tps, dpg,
    s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_b_b, s_b_g, s_b_n, s_b_l, s_c_b, s_c_g, s_c_n, s_c_l,
    s_z_b, s_z_d, s_z_l, s_o_b, s_o_d, s_o_l, s_seq_b, s_seq_l,
    s_du_b, s_du_d, s_du_l, s_ddl_b, s_ddl_d, s_ddl_l, s_dz_b, s_dz_d, s_dz_l,
    s_db_b, s_db_g, s_db_n, s_dc_b, s_dc_g, s_dc_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_G0: tl.constexpr, SAME_GROUP: tl.constexpr, CARRY_ONLY: tl.constexpr,
    BD: tl.constexpr, BN: tl.constexpr, TT: tl.constexpr, STAGES: tl.constexpr,
):
    """Grid (b, cdiv(dim, BD), nseg); each program walks its segment's tiles in reverse. G0 (b, nseg, dim, n):
    dL/dh carried into each segment from the right (for the last segment: dL/dh_final). DBM/DCM
    (b, g, n, l) fp32 zero-initialised (atomics, unit stride in l); DA_PART (b, nseg, dim, n),
    DD_PART / DBIAS_PART (b, nseg, dim), DINIT (b, dim, n) (segment 0), all fp32.
    CARRY_ONLY: only the reverse scan from a zero carry; writes SEG_P, SEG_G (b, nseg, dim, n) with
    g_first = SEG_P · G_in + SEG_G. Tiles (TT, BN, BD) as in the forward; carries folded in likewise."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    seg = tl.program_id(2)
    nseg = tl.num_programs(2)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, BN)
    mask_n = offs_n < dstate
    mn_d, A_blk, bias, dskip, grp = _prologue(A, BIAS, DPTR, offs_d, mask_d, offs_n, mask_n, dstate, dpg, HAS_BIAS,
                                              HAS_D, SAME_GROUP, BD)
    A2 = A_blk * LOG2E
    st_off = offs_d[None, :] * dstate + offs_n[:, None]  # (BN, BD)
    seg_off = (pid_b * nseg + seg) * dim * dstate + st_off
    if HAS_G0:
        G = tl.load(G0 + seg_off, mask=mn_d, other=0.0).to(tl.float32)
    else:
        G = tl.zeros([BN, BD], dtype=tl.float32)
    prod = tl.full([BN, BD], 1.0, dtype=tl.float32)
    dA_acc = tl.zeros([BN, BD], dtype=tl.float32)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    dbias_acc = tl.zeros([BD], dtype=tl.float32)
    t0 = tl.arange(0, TT)[:, None, None]
    it_lo = seg * tps
    it_hi = tl.minimum(ntiles, (seg + 1) * tps)
    for k in tl.range(0, it_hi - it_lo, num_stages=STAGES):
        it = it_hi - 1 - k
        t = it * TT + tl.arange(0, TT)
        mask_t = t < seqlen
        m2 = mask_t[:, None] & mask_d[None, :]
        ct = _load_c(CM, pid_b, grp * s_c_g, offs_n, mask_n, offs_d, mask_d, t, mask_t, s_c_b, s_c_n, s_c_l, SAME_GROUP)
        dout = tl.load(DOUT + pid_b * s_o_b + t[:, None] * s_o_l + offs_d[None, :] * s_o_d, mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(Z + pid_b * s_z_b + t[:, None] * s_z_l + offs_d[None, :] * s_z_d, mask=m2, other=0.0).to(tl.float32)
            sg = tl.sigmoid(zz)
            dy = dout * zz * sg
        else:
            zz = dout
            sg = dout
            dy = dout
        # decay of the next token (a_{t+1}); 1 after the last token, so the carry G enters there unchanged
        tn = t + 1
        mask_tn = tn < seqlen
        mn2 = mask_tn[:, None] & mask_d[None, :]
        raw_n = tl.load(DELTA + pid_b * s_dl_b + tn[:, None] * s_dl_l + offs_d[None, :] * s_dl_d, mask=mn2, other=0.0).to(tl.float32)
        dl_n = tl.where(mn2, _delta(raw_n, bias[None, :], SOFTPLUS), 0.0)
        alpha = tl.exp2(dl_n[:, None, :] * A2[None, :, :])
        if HAS_SEQ:
            s_now = tl.load(SEQ + pid_b * s_seq_b + t * s_seq_l, mask=mask_t, other=0)
            s_next = tl.load(SEQ + pid_b * s_seq_b + tn * s_seq_l, mask=mask_tn, other=0)
            keep_n = ((s_now == s_next) | (tn >= seqlen)).to(tl.float32)
            alpha = alpha * keep_n[:, None, None]
        cdy = ct * dy[:, None, :]  # (TT, BN, BD)
        if CARRY_ONLY:
            qa, qb = tl.associative_scan((alpha, cdy), 0, _compose, reverse=True)
            qa0 = tl.sum(tl.where(t0 == 0, qa, 0.0), axis=0)
            prod = prod * qa0
            G = qa0 * G + tl.sum(tl.where(t0 == 0, qb, 0.0), axis=0)
        else:
            cdy = tl.where(t0 == TT - 1, alpha * G[None, :, :] + cdy, cdy)  # fold the carry into the last token
            _, g = tl.associative_scan((alpha, cdy), 0, _compose, reverse=True)  # (TT, BN, BD): dL/dh_t
            G = tl.sum(tl.where(t0 == 0, g, 0.0), axis=0)
            u, dl, raw, a, bx, bt = _tile_inputs(
                U, DELTA, BM, SEQ, pid_b, offs_d, mask_d, t, mask_t, bias, A2, grp * s_b_g, offs_n, mask_n,
                s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_b_b, s_b_n, s_b_l, s_seq_b, s_seq_l,
                SOFTPLUS, HAS_SEQ, SAME_GROUP)
            h0 = tl.load(CKPT + (pid_b * ntiles + it) * dim * dstate + st_off, mask=mn_d, other=0.0)
            _, hs = tl.associative_scan((a, tl.where(t0 == 0, a * h0[None, :, :] + bx, bx)), 0, _compose)
            if HAS_Z:
                y = tl.sum(hs * ct, axis=1) + dskip[None, :] * u
                dz = dout * y * sg * (1.0 + zz * (1.0 - sg))
                tl.store(DZ + pid_b * s_dz_b + t[:, None] * s_dz_l + offs_d[None, :] * s_dz_d, dz.to(DZ.dtype.element_ty), mask=m2)
            r = g * (hs - bx)  # gradient w.r.t. the log decay Δ_t A (hs - b = a h_prev)
            gB = tl.sum(g * bt, axis=1)  # (TT, BD)
            du = dl * gB + dskip[None, :] * dy
            ddl = tl.sum(r * A_blk[None, :, :], axis=1) + u * gB
            if SOFTPLUS:
                ddl = ddl * tl.sigmoid(raw + bias[None, :])
            ddl = tl.where(m2, ddl, 0.0)
            tl.store(DU + pid_b * s_du_b + t[:, None] * s_du_l + offs_d[None, :] * s_du_d, du.to(DU.dtype.element_ty), mask=m2)
            tl.store(DDELTA + pid_b * s_ddl_b + t[:, None] * s_ddl_l + offs_d[None, :] * s_ddl_d, ddl.to(DDELTA.dtype.element_ty), mask=m2)
            dA_acc += tl.sum(r * dl[:, None, :], axis=0)
            dD_acc += tl.sum(dy * u, axis=0)
            dbias_acc += tl.sum(ddl, axis=0)
            gdu = g * (dl * u)[:, None, :]  # (TT, BN, BD) -> dB
            hdy = hs * dy[:, None, :]  # -> dC
            if SAME_GROUP:
                mtn = mask_t[:, None] & mask_n[None, :]
                tl.atomic_add(DBM + pid_b * s_db_b + grp * s_db_g + t[:, None] + offs_n[None, :] * s_db_n, tl.sum(gdu, axis=2), mask=mtn, sem="relaxed")
                tl.atomic_add(DCM + pid_b * s_dc_b + grp * s_dc_g + t[:, None] + offs_n[None, :] * s_dc_n, tl.sum(hdy, axis=2), mask=mtn, sem="relaxed")
            else:
                m3 = mask_t[:, None, None] & mask_n[None, :, None] & mask_d[None, None, :]
                tl.atomic_add(DBM + pid_b * s_db_b + t[:, None, None] + offs_n[None, :, None] * s_db_n + grp[None, None, :] * s_db_g, gdu, mask=m3, sem="relaxed")
                tl.atomic_add(DCM + pid_b * s_dc_b + t[:, None, None] + offs_n[None, :, None] * s_dc_n + grp[None, None, :] * s_dc_g, hdy, mask=m3, sem="relaxed")
    if CARRY_ONLY:
        tl.store(SEG_P + seg_off, prod, mask=mn_d)
        tl.store(SEG_G + seg_off, G, mask=mn_d)
    else:
        if seg == 0:
            # dinit = a_0 g_0 (token 0 never resets: the initial state belongs to its document)
            raw0 = tl.load(DELTA + pid_b * s_dl_b + offs_d * s_dl_d, mask=mask_d, other=0.0).to(tl.float32)
            a0 = tl.exp2(_delta(raw0, bias, SOFTPLUS)[None, :] * A2)
            tl.store(DINIT + pid_b * dim * dstate + st_off, a0 * G, mask=mn_d)
        tl.store(DA_PART + seg_off, dA_acc, mask=mn_d)
        vec_off = (pid_b * nseg + seg) * dim + offs_d
        tl.store(DD_PART + vec_off, dD_acc, mask=mask_d)
        tl.store(DBIAS_PART + vec_off, dbias_acc, mask=mask_d)
