# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Triton causal depthwise conv1d (Mamba's short conv), forward + backward, and the decode update.

    pre[b, d, t] = bias[d] + sum_{k<W} w[d, k] * x[b, d, t - (W-1) + k]     (taps before 0 or in an earlier
    y = silu(pre) (or pre)                                                   document read 0)
Backward, with g = dy * silu'(pre) (silu'(v) = s (1 + v (1 - s))):
    dx[s] = sum_k w[k] g[s + (W-1) - k] (same document),  dw[k] = sum_{b,t} g[t] x[t - (W-1) + k],  dbias = sum g
pre is recomputed in the backward, so nothing but x is saved. Backward: without documents one launch, a
sequential time walk (`triton_bwd.py`); with seq_idx two launches (g, recomputing pre once per position,
into an fp32 (b, t, dim) buffer together with dw / dbias, each program adding its partial sums atomically
once; then dx from W shifted reads of g). Forward: one tile kernel.
Same layout and results as `transmamba.ops.conv.causal_conv1d` (x (batch, dim, seqlen), any strides,
weight (dim, W)); `initial_state` / `return_final_state` are left to the torch version.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pre(X, W, BIAS, SEQ, b, offs_d, md, t, mt, seqlen, s_x_b, s_x_d, s_x_l, s_seq_b, s_seq_l,
         WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, BD: tl.constexpr,
         BL: tl.constexpr):
    """pre-activation at times t (BL,) for channels offs_d (BD,): (BD, BL) fp32."""
    acc = tl.zeros((BD, BL), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_d, mask=md, other=0.0).to(tl.float32)[:, None]
    if HAS_SEQ:
        seq_t = tl.load(SEQ + b * s_seq_b + t * s_seq_l, mask=mt, other=-1)
    for k in tl.static_range(WIDTH):
        ts = t - (WIDTH - 1) + k
        ok = mt & (ts >= 0)
        if HAS_SEQ:
            seq_s = tl.load(SEQ + b * s_seq_b + ts * s_seq_l, mask=ok, other=-2)
            ok &= seq_s == seq_t
        xv = tl.load(X + b * s_x_b + offs_d[:, None] * s_x_d + ts[None, :] * s_x_l,
                     mask=md[:, None] & ok[None, :], other=0.0).to(tl.float32)
        wk = tl.load(W + offs_d * WIDTH + k, mask=md, other=0.0).to(tl.float32)
        acc += wk[:, None] * xv
    return acc


@triton.jit
def _fwd_kernel(X, W, BIAS, SEQ, Y, seqlen, dim, s_x_b, s_x_d, s_x_l, s_y_b, s_y_d, s_y_l, s_seq_b, s_seq_l,
                WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
                BD: tl.constexpr, BL: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)  # offsets of large tensors need 64 bits
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    t = tl.program_id(2) * BL + tl.arange(0, BL)
    md = offs_d < dim
    mt = t < seqlen
    pre = _pre(X, W, BIAS, SEQ, b, offs_d, md, t, mt, seqlen, s_x_b, s_x_d, s_x_l, s_seq_b, s_seq_l,
               WIDTH, HAS_BIAS, HAS_SEQ, BD, BL)
    if SILU:
        pre = pre * tl.sigmoid(pre)
    tl.store(Y + b * s_y_b + offs_d[:, None] * s_y_d + t[None, :] * s_y_l, pre, mask=md[:, None] & mt[None, :])


@triton.jit
def _bwd_g_kernel(X, W, BIAS, SEQ, DY, G, DW, DB, seqlen, dim, s_x_b, s_x_d, s_x_l, s_y_b, s_y_d, s_y_l,
                  s_seq_b, s_seq_l, blocks_per_prog,
                  WIDTH: tl.constexpr, WP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
                  SILU: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr):
    """Backward, part 1: g = dy * silu'(pre) (pre recomputed once per position) into G (b, seqlen, dim) fp32,
    and dW[k] = sum_t g[t] x[t - (W-1) + k], dbias = sum_t g[t]. The products are summed elementwise into
    (BD, BL) register tiles over `blocks_per_prog` time blocks (WIDTH <= 4 taps: one tile each) and reduced
    over time once at the end, then added atomically once per program."""
    b = tl.program_id(0).to(tl.int64)  # offsets of large tensors need 64 bits
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    md = offs_d < dim
    a0 = tl.zeros((BD, BL), dtype=tl.float32)
    a1 = tl.zeros((BD, BL), dtype=tl.float32)
    a2 = tl.zeros((BD, BL), dtype=tl.float32)
    a3 = tl.zeros((BD, BL), dtype=tl.float32)
    ab = tl.zeros((BD, BL), dtype=tl.float32)
    blk0 = tl.program_id(2) * blocks_per_prog
    for blk in range(blk0, blk0 + blocks_per_prog):
        t = blk * BL + tl.arange(0, BL)
        mt = t < seqlen
        dy = tl.load(DY + b * s_y_b + offs_d[:, None] * s_y_d + t[None, :] * s_y_l,
                     mask=md[:, None] & mt[None, :], other=0.0).to(tl.float32)
        if SILU:
            pre = _pre(X, W, BIAS, SEQ, b, offs_d, md, t, mt, seqlen, s_x_b, s_x_d, s_x_l, s_seq_b, s_seq_l,
                       WIDTH, HAS_BIAS, HAS_SEQ, BD, BL)
            sg = tl.sigmoid(pre)
            g = dy * sg * (1.0 + pre * (1.0 - sg))
        else:
            g = dy
        g = tl.where(md[:, None] & mt[None, :], g, 0.0)
        tl.store(G + b * seqlen * dim + t[None, :] * dim + offs_d[:, None], g, mask=md[:, None] & mt[None, :])
        ab += g
        if HAS_SEQ:
            seq_t = tl.load(SEQ + b * s_seq_b + t * s_seq_l, mask=mt, other=-1)
        for k in tl.static_range(WIDTH):
            ts = t - (WIDTH - 1) + k
            ok = mt & (ts >= 0)
            if HAS_SEQ:
                seq_s = tl.load(SEQ + b * s_seq_b + ts * s_seq_l, mask=ok, other=-2)
                ok &= seq_s == seq_t
            xk = tl.load(X + b * s_x_b + offs_d[:, None] * s_x_d + ts[None, :] * s_x_l,
                         mask=md[:, None] & ok[None, :], other=0.0).to(tl.float32)
            if k == 0:
                a0 += g * xk
            elif k == 1:
                a1 += g * xk
            elif k == 2:
                a2 += g * xk
            else:
                a3 += g * xk
    tl.atomic_add(DW + offs_d * WIDTH + 0, tl.sum(a0, axis=1), mask=md)
    if WIDTH > 1:
        tl.atomic_add(DW + offs_d * WIDTH + 1, tl.sum(a1, axis=1), mask=md)
    if WIDTH > 2:
        tl.atomic_add(DW + offs_d * WIDTH + 2, tl.sum(a2, axis=1), mask=md)
    if WIDTH > 3:
        tl.atomic_add(DW + offs_d * WIDTH + 3, tl.sum(a3, axis=1), mask=md)
    if HAS_BIAS:
        tl.atomic_add(DB + offs_d, tl.sum(ab, axis=1), mask=md)


@triton.jit
def _bwd_dx_kernel(G, W, SEQ, DX, seqlen, dim, s_dx_b, s_dx_d, s_dx_l, s_seq_b, s_seq_l,
                   WIDTH: tl.constexpr, HAS_SEQ: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr):
    """Backward, part 2: dx[s] = sum_j w[W-1-j] g[s + j] over s + j in x[s]'s document (G from part 1)."""
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    s = tl.program_id(2) * BL + tl.arange(0, BL)
    md = offs_d < dim
    ms = s < seqlen
    if HAS_SEQ:
        seq_s = tl.load(SEQ + b * s_seq_b + s * s_seq_l, mask=ms, other=-1)
    dx = tl.zeros((BD, BL), dtype=tl.float32)
    for j in tl.static_range(WIDTH):
        t = s + j
        ok = ms & (t < seqlen)
        if HAS_SEQ:
            seq_t = tl.load(SEQ + b * s_seq_b + t * s_seq_l, mask=ok, other=-2)
            ok &= seq_t == seq_s
        gj = tl.load(G + b * seqlen * dim + t[None, :] * dim + offs_d[:, None], mask=md[:, None] & ok[None, :],
                     other=0.0)
        wk = tl.load(W + offs_d * WIDTH + (WIDTH - 1 - j), mask=md, other=0.0).to(tl.float32)
        dx += wk[:, None] * gj
    tl.store(DX + b * s_dx_b + offs_d[:, None] * s_dx_d + s[None, :] * s_dx_l, dx, mask=md[:, None] & ms[None, :])


@triton.jit
def _update_kernel(X, STATE, W, BIAS, Y, NEW, dim, s_st_b, s_st_d, s_st_k,
                   WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BD: tl.constexpr):
    """One token: window = [state (W-1), x]; y = silu(bias + sum w * window); NEW = window[1:]. X, Y (b, dim)
    contiguous; NEW (b, dim, W-1) contiguous (may alias STATE when it is contiguous)."""
    b = tl.program_id(0).to(tl.int64)  # offsets of large tensors need 64 bits
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    md = offs_d < dim
    acc = tl.zeros((BD,), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_d, mask=md, other=0.0).to(tl.float32)
    xv = tl.load(X + b * dim + offs_d, mask=md, other=0.0)
    for k in tl.static_range(WIDTH - 1):
        sv = tl.load(STATE + b * s_st_b + offs_d * s_st_d + k * s_st_k, mask=md, other=0.0)
        acc += tl.load(W + offs_d * WIDTH + k, mask=md, other=0.0).to(tl.float32) * sv.to(tl.float32)
        if k > 0:
            tl.store(NEW + (b * dim + offs_d) * (WIDTH - 1) + k - 1, sv, mask=md)
    acc += tl.load(W + offs_d * WIDTH + WIDTH - 1, mask=md, other=0.0).to(tl.float32) * xv.to(tl.float32)
    tl.store(NEW + (b * dim + offs_d) * (WIDTH - 1) + WIDTH - 2, xv, mask=md)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(Y + b * dim + offs_d, acc, mask=md)


# Tiles: BD channels x BL time steps. The models' conv input is channels-last (a slice of in_proj's
# (b, t, d_in_proj) output), so 64 adjacent channels (128 bytes of bf16) per time step are read together.
_BD, _BL = 64, 32
_PROGRAMS = 528  # backward: split time so that about this many programs run (4 per H100 SM)


def _empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """An empty (batch, dim, seqlen) tensor in x's memory order: channels-last (the transposed view of a
    (batch, seqlen, dim) buffer) when x's channels are adjacent, as for Mamba's in_proj output, so the
    (b, t, ...) views taken of the result downstream are coalesced; else contiguous."""
    if x.stride(1) == 1 and x.shape[1] > 1:
        b, d, t = x.shape
        return torch.empty(b, t, d, device=x.device, dtype=x.dtype).transpose(1, 2)
    return torch.empty(x.shape, device=x.device, dtype=x.dtype)


def conv1d_fwd_into(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    seq_idx: torch.Tensor | None, silu: bool, y: torch.Tensor):
    """y (batch, dim, seqlen), any strides, <- silu?(bias + causal depthwise conv of x (batch, dim, seqlen));
    weight (dim, W) contiguous: W shifted tile reads per (channel block, time block). Returns the launched
    kernel."""
    batch, dim, seqlen = x.shape
    seq = seq_idx if seq_idx is not None else x
    ss = (seq_idx.stride(0), seq_idx.stride(1)) if seq_idx is not None else (0, 0)
    grid = (batch, triton.cdiv(dim, _BD), triton.cdiv(seqlen, _BL))
    return _fwd_kernel[grid](x, weight, bias if bias is not None else weight, seq, y, seqlen, dim, *x.stride(),
                             *y.stride(), *ss, WIDTH=weight.shape[1], HAS_BIAS=bias is not None,
                             HAS_SEQ=seq_idx is not None, SILU=silu, BD=_BD, BL=_BL, num_warps=4)


def _bwd_two_launch(x, weight, bias, seq_idx, silu, dy, dx):
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    dw = torch.zeros(dim, width, device=x.device, dtype=torch.float32)
    db = torch.zeros(dim, device=x.device, dtype=torch.float32)
    seq = seq_idx if seq_idx is not None else x
    ss = (seq_idx.stride(0), seq_idx.stride(1)) if seq_idx is not None else (0, 0)
    g = torch.empty(batch, seqlen, dim, device=x.device, dtype=torch.float32)  # dy * silu'(pre)
    n_blocks = triton.cdiv(seqlen, _BL)
    split = max(1, min(n_blocks, triton.cdiv(_PROGRAMS, batch * triton.cdiv(dim, _BD))))
    per = triton.cdiv(n_blocks, split)
    grid = (batch, triton.cdiv(dim, _BD), triton.cdiv(n_blocks, per))
    _bwd_g_kernel[grid](x, weight, bias if bias is not None else weight, seq, dy, g, dw, db, seqlen, dim,
                        *x.stride(), *dy.stride(), *ss, per, WIDTH=width, WP=triton.next_power_of_2(width),
                        HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu, BD=_BD,
                        BL=_BL, num_warps=4)
    _bwd_dx_kernel[(batch, triton.cdiv(dim, _BD), n_blocks)](
        g, weight, seq, dx, seqlen, dim, *dx.stride(), *ss, WIDTH=width, HAS_SEQ=seq_idx is not None,
        BD=_BD, BL=_BL, num_warps=4)
    return dw, (db if bias is not None else None)


def conv1d_bwd_into(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor | None,
                    silu: bool, dy: torch.Tensor, dx: torch.Tensor):
    """dx (batch, dim, seqlen), any strides, <- the input gradient for dy (any strides); returns (dw (dim, W),
    dbias (dim,) or None) in fp32. Without documents the one-launch time walk (`triton_bwd.py`); with seq_idx
    the two-launch backward (the walk's document path is not yet confirmed on a GPU, see triton_bwd.py)."""
    if seq_idx is not None:
        return _bwd_two_launch(x, weight, bias, seq_idx, silu, dy, dx)
    from transmamba.ops.conv.triton_bwd import conv1d_bwd_walk

    return conv1d_bwd_walk(x, weight, bias, None, silu, dy, dx)


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx, silu):
        weight = weight.contiguous()
        y = _empty_like_layout(x)
        conv1d_fwd_into(x, weight, bias, seq_idx, silu, y)
        ctx.save_for_backward(x, weight, bias, seq_idx)
        ctx.silu = silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, seq_idx = ctx.saved_tensors
        dx = _empty_like_layout(x)
        dw, db = conv1d_bwd_into(x, weight, bias, seq_idx, ctx.silu, dy, dx)
        return dx, dw.to(weight.dtype), (db.to(bias.dtype) if bias is not None else None), None, None


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         seq_idx: torch.Tensor | None = None, silu: bool = False) -> torch.Tensor:
    """x (batch, dim, seqlen) -> y (same shape and dtype); differentiable in x, weight, bias. Widths 2..4."""
    if not 2 <= weight.shape[1] <= 4:
        raise ValueError(f"causal_conv1d_triton: conv width must be 2..4, got {weight.shape[1]}")
    return _CausalConv1d.apply(x, weight, bias, seq_idx, bool(silu))


@torch.no_grad()
def causal_conv1d_update_triton(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                                bias: torch.Tensor | None = None, silu: bool = False):
    """One decode token: x (batch, dim), conv_state (batch, dim, W-1) -> (y (batch, dim), new_state);
    conv_state is not modified (a new tensor is returned, like the torch version)."""
    batch, dim = x.shape
    width = weight.shape[1]
    x = x.contiguous()
    y = torch.empty_like(x)
    new = torch.empty(batch, dim, width - 1, device=x.device, dtype=x.dtype)
    _update_kernel[(batch, triton.cdiv(dim, 256))](
        x, conv_state, weight.contiguous(), bias if bias is not None else weight, y, new, dim,
        *conv_state.stride(), WIDTH=width, HAS_BIAS=bias is not None, SILU=silu, BD=256, num_warps=4)
    return y, new


def causal_conv1d_cuda(x, weight, bias=None, *, activation=None, seq_idx=None, initial_state=None,
                       return_final_state=False):
    """`ops.conv.causal_conv1d`'s contract on the Triton kernel, or None where this path does not apply
    (an initial state, width outside 2..4, fp64, or an unknown activation): the caller then uses the torch
    version.
    The final state (the last W-1 inputs, zero where they belong to an earlier document than the last
    token's) is sliced in torch."""
    width = weight.shape[1]
    if initial_state is not None or not 2 <= width <= 4 or x.dtype == torch.float64 or activation not in (
            None, "silu", "swish"):
        return None
    y = causal_conv1d_triton(x, weight, bias, seq_idx, activation in ("silu", "swish"))
    if not return_final_state:
        return y
    seqlen = x.shape[-1]
    final = x[:, :, max(0, seqlen - (width - 1)):]
    if final.shape[-1] < width - 1:
        final = torch.cat([x.new_zeros(x.shape[0], x.shape[1], width - 1 - final.shape[-1]), final], dim=-1)
    if seq_idx is not None:
        tail = seq_idx[:, max(0, seqlen - (width - 1)):]
        same = (tail == seq_idx[:, -1:]).to(x.dtype)
        if same.shape[-1] < width - 1:
            same = torch.cat([same.new_zeros(same.shape[0], width - 1 - same.shape[-1]), same], dim=-1)
        final = final * same[:, None, :]
    return y, final
