"""Mamba-2's in_proj output -> (z, x, B, C, dt) with the conv on xBC, as one autograd Function.

    zxbcdt (b, t, d_z + d_x + 2 g n + h) = [z | x | B | C | dt]   (in_proj's output, one buffer)
    x, B, C = silu(causal_conv1d([x | B | C]))                     each written as its own contiguous tensor
    z, dt   = views of zxbcdt                                      (no copy)

Why: with `torch.split` + the conv on the strided xBC view + another split, autograd undoes both splits in
the backward by concatenations (dz, dxBC, ddt -> one (b, t, d_in_proj) gradient), and the SSD copies the
strided x / B / C views with `.contiguous()`. Here the backward allocates the one gradient buffer, the conv
backward writes dx / dB / dC's input gradients straight into its xBC columns (three launches, one per part,
each reading its part's gradient with its own strides), and only dz and ddt (d_z + h columns) are copied in.
The depthwise conv never mixes channels, so running it per part is exact.
"""

from __future__ import annotations

import torch

from transmamba.ops.conv.triton import conv1d_bwd_into, conv1d_fwd_into


def _parts(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """(d_z, d_x, d_b, d_c, h) -> the (offset in zxbcdt, width) of x, B, C."""
    d_z, d_x, d_b, d_c, _ = sizes
    return [(d_z, d_x), (d_z + d_x, d_b), (d_z + d_x + d_b, d_c)]


class _ConvSplit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zxbcdt, weight, bias, seq_idx, sizes, silu):
        b, t, _ = zxbcdt.shape
        d_z, h = sizes[0], sizes[4]
        weight = weight.contiguous()
        outs = []
        a = 0  # channel offset inside xBC (weight / bias rows)
        for off, n in _parts(sizes):
            y = torch.empty(b, t, n, device=zxbcdt.device, dtype=zxbcdt.dtype)  # (b, t, n) contiguous
            conv1d_fwd_into(zxbcdt[..., off:off + n].transpose(1, 2), weight[a:a + n],
                            bias[a:a + n] if bias is not None else None, seq_idx, silu, y.transpose(1, 2))
            outs.append(y)
            a += n
        ctx.save_for_backward(zxbcdt, weight, bias, seq_idx)
        ctx.sizes, ctx.silu = sizes, silu
        z = zxbcdt[..., :d_z]
        dt = zxbcdt[..., d_z + a:d_z + a + h]
        return z, outs[0], outs[1], outs[2], dt

    @staticmethod
    def backward(ctx, dz, dx, dB, dC, ddt):
        zxbcdt, weight, bias, seq_idx = ctx.saved_tensors
        sizes = ctx.sizes
        d_z, h = sizes[0], sizes[4]
        grad = torch.empty_like(zxbcdt, memory_format=torch.contiguous_format)  # (b, t, d_in_proj)
        if dz is None:
            grad[..., :d_z].zero_()
        else:
            grad[..., :d_z].copy_(dz)
        dws, dbs = [], []
        a = 0
        for (off, n), dy in zip(_parts(sizes), (dx, dB, dC)):
            gslice = grad[..., off:off + n]
            if dy is None:
                gslice.zero_()
                dws.append(weight.new_zeros(n, weight.shape[1], dtype=torch.float32))
                dbs.append(weight.new_zeros(n, dtype=torch.float32))
            else:
                dw, db = conv1d_bwd_into(zxbcdt[..., off:off + n].transpose(1, 2), weight[a:a + n],
                                         bias[a:a + n] if bias is not None else None, seq_idx, ctx.silu,
                                         dy.transpose(1, 2), gslice.transpose(1, 2))
                dws.append(dw)
                dbs.append(db)
            a += n
        if ddt is None:
            grad[..., d_z + a:].zero_()
        else:
            grad[..., d_z + a:d_z + a + h].copy_(ddt)
        dweight = torch.cat(dws).to(weight.dtype)
        dbias = torch.cat(dbs).to(bias.dtype) if bias is not None else None
        return grad, dweight, dbias, None, None, None


def conv_split_triton(zxbcdt: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      seq_idx: torch.Tensor | None, sizes: tuple[int, int, int, int, int], silu: bool = True):
    """zxbcdt (b, t, sum(sizes)) with sizes = (d_z, d_x, d_b, d_c, h); weight (d_x + d_b + d_c, W), W 2..4
    -> z (b, t, d_z) and dt (b, t, h) views, x (b, t, d_x), B (b, t, d_b), C (b, t, d_c) contiguous.
    Differentiable in zxbcdt, weight, bias."""
    return _ConvSplit.apply(zxbcdt, weight, bias, seq_idx, tuple(int(s) for s in sizes), bool(silu))
