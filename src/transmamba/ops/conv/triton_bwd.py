# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""One-launch backward of the causal depthwise conv1d (no fp32 g buffer): a time walk.

With pre[t] = bias + sum_{k<W} w[k] x[t - (W-1) + k] (taps in t's document only), g[t] = dy[t] silu'(pre[t])
(silu'(v) = s (1 + v (1 - s)), s = sigmoid(v); g = dy without the activation):

    dx[s]  = sum_{j<W} w[W-1-j] g[s + j]          (s + j < seqlen, same document as s)
    dw[k]  = sum_{b,t} g[t] x[t - (W-1) + k]       (same document),      dbias = sum_{b,t} g[t]

dx is written with any strides (e.g. straight into a slice of in_proj's gradient), dw / dbias as fp32
partial sums per program, (n_parts, dim, W + 1), summed in torch (deterministic, no atomics).

A program owns BD channels and walks a time chunk backwards one step at a time, keeping the last
W - 1 inputs, W - 1 gradients g (and document ids) in registers: one load of x and dy and one store of dx
per element; the next step's loads are issued before the current step's store (prefetch distance 1).
Widths below 4 are run as width 4 with leading zero taps.
Its document (seq_idx) path was once wrong on the H100 (~0.3 relative error at 1000 steps, correct
under TRITON_INTERPRET=1): the three ids after the current step were bound to one object before the loop,
and Triton's frontend, which finds loop-carried variables by comparing objects, kept them loop-invariant
(visible in the TTGIR: they were missing from the loop's iter_args). They are now separate loads (the
TTGIR carries them); until a GPU test confirms it, `conv.triton.conv1d_bwd_into` still sends rows with seq_idx
to the two-launch backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_grad(dy, pre, SILU: tl.constexpr):
    if SILU:
        sg = tl.sigmoid(pre)
        return dy * sg * (1.0 + pre * (1.0 - sg))
    return dy


@triton.jit
def _wpad(W, offs_d, md, kp: tl.constexpr, WIDTH: tl.constexpr):
    """Tap kp of the width-4 padded filter: w[kp - (4 - W)], zero for the leading 4 - W taps."""
    if kp < 4 - WIDTH:
        return tl.zeros(offs_d.shape, dtype=tl.float32)
    return tl.load(W + offs_d * WIDTH + (kp - (4 - WIDTH)), mask=md, other=0.0).to(tl.float32)


@triton.jit
def _seq_at(SEQ, b, pos, seqlen, s_seq_b, s_seq_l, HAS_SEQ: tl.constexpr):
    if HAS_SEQ:
        # clamped: outside [0, seqlen) the x taps and dy read 0, so the id there does not matter
        return tl.load(SEQ + b * s_seq_b + tl.minimum(tl.maximum(pos, 0), seqlen - 1) * s_seq_l).to(tl.int64)
    return tl.full([], 0, tl.int64)


@triton.jit
def _in(md, offs_d, pos, seqlen):
    """(BD,) mask: channel valid and 0 <= pos < seqlen (pos a scalar, broadcast over the channels)."""
    p = offs_d * 0 + pos
    return md & (p >= 0) & (p < seqlen)


@triton.jit
def _bwd_walk_kernel(X, W, BIAS, SEQ, DY, DX, PART, seqlen, dim, s_x_b, s_x_d, s_x_l, s_y_b, s_y_d, s_y_l,
                     s_dx_b, s_dx_d, s_dx_l, s_seq_b, s_seq_l,
                     WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
                     BD: tl.constexpr, CH: tl.constexpr):
    """Grid (batch, cdiv(dim, BD), cdiv(seqlen, CH)); program walks s = c1 + 2 .. c0 (c1 = c0 + CH) backwards,
    storing dx and summing dw / dbias only for s in [c0, min(c1, seqlen)). PART as in the tile kernel."""
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    md = offs_d < dim
    c0 = tl.program_id(2).to(tl.int64) * CH  # 64-bit time offsets (t * row stride can pass 2^31)
    c1 = c0 + CH
    v0 = _wpad(W, offs_d, md, 0, WIDTH)
    v1 = _wpad(W, offs_d, md, 1, WIDTH)
    v2 = _wpad(W, offs_d, md, 2, WIDTH)
    v3 = _wpad(W, offs_d, md, 3, WIDTH)
    bias = tl.zeros((BD,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + offs_d, mask=md, other=0.0).to(tl.float32)
    xb = X + b * s_x_b + offs_d * s_x_d
    yb = DY + b * s_y_b + offs_d * s_y_d
    s = c1 + 2
    # carried: x at s, s-1, s-2; g at s+1..s+3; document ids at s-2..s+3
    xa = tl.load(xb + s * s_x_l, mask=_in(md, offs_d, s, seqlen), other=0.0).to(tl.float32)
    xm1 = tl.load(xb + (s - 1) * s_x_l, mask=_in(md, offs_d, s - 1, seqlen), other=0.0).to(tl.float32)
    xm2 = tl.load(xb + (s - 2) * s_x_l, mask=_in(md, offs_d, s - 2, seqlen), other=0.0).to(tl.float32)
    g1 = tl.zeros((BD,), dtype=tl.float32)
    g2 = tl.zeros((BD,), dtype=tl.float32)
    g3 = tl.zeros((BD,), dtype=tl.float32)
    q0 = _seq_at(SEQ, b, s, seqlen, s_seq_b, s_seq_l, HAS_SEQ)
    qm1 = _seq_at(SEQ, b, s - 1, seqlen, s_seq_b, s_seq_l, HAS_SEQ)
    qm2 = _seq_at(SEQ, b, s - 2, seqlen, s_seq_b, s_seq_l, HAS_SEQ)
    # ids at s+1..s+3 (the g there are still zero); loaded, not `= q0`: the compiler's loop-carried-variable
    # detection compares objects, so three names bound to one object before the loop were taken as
    # loop-invariant (wrong dx with documents on the GPU, right under the interpreter)
    qp1 = _seq_at(SEQ, b, s + 1, seqlen, s_seq_b, s_seq_l, HAS_SEQ)
    qp2 = _seq_at(SEQ, b, s + 2, seqlen, s_seq_b, s_seq_l, HAS_SEQ)
    qp3 = _seq_at(SEQ, b, s + 3, seqlen, s_seq_b, s_seq_l, HAS_SEQ)
    # prefetched for the current step: x[s-3], dy[s], seq[s-3]
    xm3 = tl.load(xb + (s - 3) * s_x_l, mask=_in(md, offs_d, s - 3, seqlen), other=0.0).to(tl.float32)
    dy = tl.load(yb + s * s_y_l, mask=_in(md, offs_d, s, seqlen), other=0.0).to(tl.float32)
    qm3 = _seq_at(SEQ, b, s - 3, seqlen, s_seq_b, s_seq_l, HAS_SEQ)
    d0 = tl.zeros((BD,), dtype=tl.float32)
    d1 = tl.zeros((BD,), dtype=tl.float32)
    d2 = tl.zeros((BD,), dtype=tl.float32)
    d3 = tl.zeros((BD,), dtype=tl.float32)
    db = tl.zeros((BD,), dtype=tl.float32)
    for i in range(0, CH + 3):
        s = c1 + 2 - i
        # next step's loads first (s - 1)
        xn = tl.load(xb + (s - 4) * s_x_l, mask=_in(md, offs_d, s - 4, seqlen), other=0.0).to(tl.float32)
        dyn = tl.load(yb + (s - 1) * s_y_l, mask=_in(md, offs_d, s - 1, seqlen), other=0.0).to(tl.float32)
        qn = _seq_at(SEQ, b, s - 4, seqlen, s_seq_b, s_seq_l, HAS_SEQ)
        t0 = xm3
        t1 = xm2
        t2 = xm1
        if HAS_SEQ:
            t0 = tl.where(qm3 == q0, t0, 0.0)
            t1 = tl.where(qm2 == q0, t1, 0.0)
            t2 = tl.where(qm1 == q0, t2, 0.0)
        pre = bias + v0 * t0 + v1 * t1 + v2 * t2 + v3 * xa
        g0 = _silu_grad(dy, pre, SILU)
        h1 = g1
        h2 = g2
        h3 = g3
        if HAS_SEQ:
            h1 = tl.where(qp1 == q0, h1, 0.0)
            h2 = tl.where(qp2 == q0, h2, 0.0)
            h3 = tl.where(qp3 == q0, h3, 0.0)
        dx = v3 * g0 + v2 * h1 + v1 * h2 + v0 * h3
        own = _in(md, offs_d, s, seqlen) & (offs_d * 0 + s < c1)
        tl.store(DX + b * s_dx_b + offs_d * s_dx_d + s * s_dx_l, dx, mask=own)
        gk = tl.where(own, g0, 0.0)
        d0 += gk * t0
        d1 += gk * t1
        d2 += gk * t2
        d3 += gk * xa
        db += gk
        # shift the windows one step back
        g3 = g2
        g2 = g1
        g1 = g0
        xa = xm1
        xm1 = xm2
        xm2 = xm3
        xm3 = xn
        dy = dyn
        qp3 = qp2
        qp2 = qp1
        qp1 = q0
        q0 = qm1
        qm1 = qm2
        qm2 = qm3
        qm3 = qn
    part = PART + ((tl.program_id(2) * tl.num_programs(0) + b) * dim + offs_d) * (WIDTH + 1)
    if WIDTH == 4:
        tl.store(part + 0, d0, mask=md)
    if WIDTH >= 3:
        tl.store(part + WIDTH - 3, d1, mask=md)
    tl.store(part + WIDTH - 2, d2, mask=md)
    tl.store(part + WIDTH - 1, d3, mask=md)
    tl.store(part + WIDTH, db, mask=md)


# launch configuration (tests shrink it to get several programs at tiny shapes): H100, 2 x 8192 tokens x 7168
# channels: 0.36 ms (the two-launch backward: 1.38 ms)
WALK = {"BD": 256, "CH": 128, "warps": 2}


def conv1d_bwd_walk(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor | None,
                    silu: bool, dy: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Writes dx (batch, dim, seqlen) in place (any strides) from x, dy (batch, dim, seqlen) (any strides);
    returns dw (dim, W) and dbias (dim,) (None without bias) in fp32. weight (dim, W) contiguous, W 2..4."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    if not 2 <= width <= 4:
        raise ValueError(f"conv1d_bwd_walk: conv width must be 2..4, got {width}")
    seq = seq_idx if seq_idx is not None else x
    ss = (seq_idx.stride(0), seq_idx.stride(1)) if seq_idx is not None else (0, 0)
    c = dict(WALK, CH=min(WALK["CH"], triton.next_power_of_2(seqlen)))  # short rows: no idle steps
    nt = triton.cdiv(seqlen, c["CH"])
    part = torch.empty(nt, batch, dim, width + 1, device=x.device, dtype=torch.float32)
    _bwd_walk_kernel[(batch, triton.cdiv(dim, c["BD"]), nt)](
        x, weight, bias if bias is not None else weight, seq, dy, dx, part, seqlen, dim, *x.stride(), *dy.stride(),
        *dx.stride(), *ss, WIDTH=width, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=bool(silu),
        BD=c["BD"], CH=c["CH"], num_warps=c["warps"])
    tot = part.sum((0, 1))  # (dim, W + 1)
    return tot[:, :width], (tot[:, width] if bias is not None else None)
