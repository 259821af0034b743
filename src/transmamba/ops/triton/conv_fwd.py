# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Causal depthwise conv1d forward as a time walk, four steps at a time (no documents):

    y[t] = act(bias + sum_{k<W} w[k] x[t - (W-1) + k])      (x before position 0 reads 0; W <= 4)

A program owns BD channels and a time chunk [c0, c0 + CH) (CH a multiple of 4) and walks it in quads: x comes
in as (BD, 4) tiles (one load per element, the next quad's tile loaded before this quad's math; the previous
tile supplies the W - 1 earlier taps) and y leaves as (BD, 4) tiles. The tile kernel in `conv.py` instead
reads x at W shifted offsets per output tile. Widths below 4 run as width 4 with leading zero taps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from transmamba.ops.triton.conv_bwd import _quad, _wpad


@triton.jit
def _fwd_walk4_kernel(X, W, BIAS, Y, seqlen, dim, s_x_b, s_x_d, s_x_l, s_y_b, s_y_d, s_y_l,
                      WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BD: tl.constexpr,
                      CH: tl.constexpr):
    """Grid (batch, cdiv(dim, BD), cdiv(seqlen, CH))."""
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    md = offs_d < dim
    c0 = tl.program_id(2).to(tl.int64) * CH  # 64-bit time offsets (t * row stride can pass 2^31)
    v0 = _wpad(W, offs_d, md, 0, WIDTH)
    v1 = _wpad(W, offs_d, md, 1, WIDTH)
    v2 = _wpad(W, offs_d, md, 2, WIDTH)
    v3 = _wpad(W, offs_d, md, 3, WIDTH)
    bias = tl.zeros((BD,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + offs_d, mask=md, other=0.0).to(tl.float32)
    xb = X + b * s_x_b + offs_d[:, None] * s_x_d
    j4 = tl.arange(0, 4)
    t = c0 - 4 + j4
    xprev = tl.load(xb + t[None, :] * s_x_l, mask=md[:, None] & ((t >= 0) & (t < seqlen))[None, :], other=0.0).to(tl.float32)
    t = c0 + j4
    xcur = tl.load(xb + t[None, :] * s_x_l, mask=md[:, None] & (t < seqlen)[None, :], other=0.0).to(tl.float32)
    for i in range(0, CH // 4):
        q = c0 + 4 * i
        t = q + 4 + j4
        xnext = tl.load(xb + t[None, :] * s_x_l, mask=md[:, None] & (t < seqlen)[None, :], other=0.0).to(tl.float32)
        xm4, xm3, xm2, xm1 = _quad(xprev)
        x0, x1, x2, x3 = _quad(xcur)
        p0 = bias + v0 * xm3 + v1 * xm2 + v2 * xm1 + v3 * x0
        p1 = bias + v0 * xm2 + v1 * xm1 + v2 * x0 + v3 * x1
        p2 = bias + v0 * xm1 + v1 * x0 + v2 * x1 + v3 * x2
        p3 = bias + v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3
        y4 = tl.reshape(tl.join(tl.join(p0, p2), tl.join(p1, p3)), (BD, 4))
        if SILU:
            y4 = y4 * tl.sigmoid(y4)
        t = q + j4
        tl.store(Y + b * s_y_b + offs_d[:, None] * s_y_d + t[None, :] * s_y_l, y4, mask=md[:, None] & (t < seqlen)[None, :])
        xprev = xcur
        xcur = xnext


WALK4 = {"BD": 256, "CH": 128, "warps": 4}  # CH a multiple of 4
LAST_LAUNCH: dict = {}


def conv1d_fwd_walk4(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool, y: torch.Tensor):
    """y (batch, dim, seqlen), any strides, <- act(bias + causal depthwise conv of x (batch, dim, seqlen), any
    strides); weight (dim, W) contiguous, W 2..4; no documents (seq_idx)."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    if not 2 <= width <= 4:
        raise ValueError(f"conv1d_fwd_walk4: conv width must be 2..4, got {width}")
    c = dict(WALK4, CH=min(WALK4["CH"], max(4, triton.next_power_of_2(seqlen))))  # short rows: no idle steps
    LAST_LAUNCH["walk4"] = _fwd_walk4_kernel[(batch, triton.cdiv(dim, c["BD"]), triton.cdiv(seqlen, c["CH"]))](
        x, weight, bias if bias is not None else weight, y, seqlen, dim, *x.stride(), *y.stride(), WIDTH=width,
        HAS_BIAS=bias is not None, SILU=bool(silu), BD=c["BD"], CH=c["CH"], num_warps=c["warps"])
    return LAST_LAUNCH["walk4"]
