"""Causal depthwise 1-D convolution (the short conv of Mamba blocks), its state, and its decode step.

Layout follows `causal_conv1d`: x is (batch, dim, seqlen), weight is (dim, width).

    y[b, d, t] = bias[d] + sum_{k=0}^{W-1} weight[d, k] * x[b, d, t - (W-1) + k]

where positions before 0 read from `initial_state` (batch, dim, W-1) or zeros. With `seq_idx` (batch, seqlen)
a tap never reads across a document boundary: inputs of an earlier document count as zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops import backend
from transmamba.ops.checks import check_shape

_ACTIVATIONS = (None, "silu", "swish")


def _use_triton(x: torch.Tensor, activation: str | None) -> bool:
    """CUDA tensors go to `ops/conv/triton.py` (imported lazily) unless TRANSMAMBA_DISABLE_TRITON is set."""
    if not x.is_cuda or x.dtype == torch.float64 or activation not in _ACTIVATIONS:
        return False
    return backend.use_triton(x)


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return F.silu(y) if activation in ("silu", "swish") else y


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    seq_idx: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv over time.

    Args:
        x: (batch, dim, seqlen).
        weight: (dim, width).
        bias: (dim,) or None.
        activation: None or "silu".
        seq_idx: (batch, seqlen) int document ids, non-decreasing along time; taps never cross documents.
        initial_state: (batch, dim, width-1), the inputs before position 0 (belong to the first document).
        return_final_state: also return the last width-1 inputs (batch, dim, width-1), the decode state.
    """
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (batch, dim, seqlen), got shape {tuple(x.shape)}")
    batch, dim, seqlen = x.shape
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"causal_conv1d: weight must be (dim={dim}, width), got shape {tuple(weight.shape)}")
    width = weight.shape[1]
    if bias is not None:
        check_shape("causal_conv1d", "bias", bias, (dim,))
    if seq_idx is not None:
        check_shape("causal_conv1d", "seq_idx", seq_idx, (batch, seqlen))
    if initial_state is None and _use_triton(x, activation):
        from transmamba.ops.conv.triton import causal_conv1d_cuda

        out = causal_conv1d_cuda(x, weight, bias, activation=activation, seq_idx=seq_idx,
                                 return_final_state=return_final_state)
        if out is not None:
            return out
    if initial_state is None:
        prefix = x.new_zeros(batch, dim, width - 1)
    else:
        check_shape("causal_conv1d", "initial_state", initial_state, (batch, dim, width - 1))
        prefix = initial_state.to(x.dtype)
    xp = torch.cat([prefix, x], dim=-1)  # (batch, dim, width-1+seqlen)
    if seq_idx is not None:
        # document id of every padded position; the prefix belongs to the first token's document
        sp = torch.cat([seq_idx[:, :1].expand(batch, width - 1), seq_idx], dim=-1)  # (batch, width-1+seqlen)
    y = x.new_zeros(batch, dim, seqlen)
    if bias is not None:
        y = y + bias.to(x.dtype)[None, :, None]
    for k in range(width):
        tap = xp[:, :, k : k + seqlen]  # input at t - (width-1) + k
        if seq_idx is not None:
            same_doc = (sp[:, k : k + seqlen] == seq_idx).unsqueeze(1)  # (batch, 1, seqlen)
            tap = tap * same_doc.to(x.dtype)
        y = y + weight[:, k].to(x.dtype)[None, :, None] * tap
    y = _activate(y, activation)
    if not return_final_state:
        return y
    final = xp[:, :, -(width - 1) :] if width > 1 else x.new_zeros(batch, dim, 0)
    if seq_idx is not None and width > 1:
        same_doc = (sp[:, -(width - 1) :] == seq_idx[:, -1:]).unsqueeze(1)
        final = final * same_doc.to(final.dtype)
    return y, final


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step. x: (batch, dim); conv_state: (batch, dim, width-1) the previous inputs.

    Returns (y (batch, dim), new_state (batch, dim, width-1)); `conv_state` is not modified.
    """
    if x.dim() != 2:
        raise ValueError(f"causal_conv1d_update: x must be (batch, dim), got shape {tuple(x.shape)}")
    batch, dim = x.shape
    width = weight.shape[1]
    check_shape("causal_conv1d_update", "conv_state", conv_state, (batch, dim, width - 1))
    if width >= 2 and _use_triton(x, activation):
        from transmamba.ops.conv.triton import causal_conv1d_update_triton

        return causal_conv1d_update_triton(x, conv_state, weight, bias, activation in ("silu", "swish"))
    window = torch.cat([conv_state.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (batch, dim, width)
    y = (window * weight.to(x.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return _activate(y, activation), window[:, :, 1:]


def _split_on_triton(zxbcdt: torch.Tensor, width: int) -> bool:
    """The Triton Function applies to CUDA tensors (not fp64, widths 2..4); on the H100 it took the
    transmamba-400m training step from 218 to 207 ms (docs/performance.md)."""
    if zxbcdt.dtype == torch.float64 or not 2 <= width <= 4:
        return False
    return _use_triton(zxbcdt, "silu")


def causal_conv1d_split(
    zxbcdt: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    sizes: tuple[int, int, int, int, int],
    *,
    activation: str | None = "silu",
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mamba-2's in_proj output split and conv in one step (no initial state):

        zxbcdt = [z | x | B | C | dt] (b, t, d_z + d_x + d_b + d_c + h),  sizes = (d_z, d_x, d_b, d_c, h)
        [x | B | C] <- activation(causal_conv1d([x | B | C]))   weight (d_x + d_b + d_c, W), taps in seq_idx

    Returns z (b, t, d_z), x (b, t, d_x), B (b, t, d_b), C (b, t, d_c), dt (b, t, h). On CUDA (Triton) x, B, C
    are contiguous and the backward writes one gradient buffer for zxbcdt (`ops/conv/triton_split.py`);
    elsewhere it is torch.split + `causal_conv1d` + torch.split, the reference."""
    if zxbcdt.dim() != 3:
        raise ValueError(f"causal_conv1d_split: zxbcdt must be (b, t, d), got shape {tuple(zxbcdt.shape)}")
    if len(sizes) != 5 or any(int(s) <= 0 for s in sizes[1:4]) or any(int(s) < 0 for s in sizes):
        raise ValueError(f"causal_conv1d_split: sizes must be 5 sizes (d_z, d_x, d_b, d_c, h), got {sizes!r}")
    if sum(sizes) != zxbcdt.shape[-1]:
        raise ValueError(f"causal_conv1d_split: sizes {tuple(sizes)} sum to {sum(sizes)}, but zxbcdt has "
                         f"{zxbcdt.shape[-1]} channels")
    d_z, d_x, d_b, d_c, h = (int(s) for s in sizes)
    conv_dim = d_x + d_b + d_c
    if weight.dim() != 2 or weight.shape[0] != conv_dim:
        raise ValueError(f"causal_conv1d_split: weight must be (d_x + d_b + d_c = {conv_dim}, width), got "
                         f"shape {tuple(weight.shape)}")
    if bias is not None:
        check_shape("causal_conv1d_split", "bias", bias, (conv_dim,))
    if seq_idx is not None:
        check_shape("causal_conv1d_split", "seq_idx", seq_idx, zxbcdt.shape[:2])
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if _split_on_triton(zxbcdt, weight.shape[1]):
        from transmamba.ops.conv.triton_split import conv_split_triton

        return conv_split_triton(zxbcdt, weight, bias, seq_idx, (d_z, d_x, d_b, d_c, h),
                                 silu=activation in ("silu", "swish"))
    z, xbc, dt = torch.split(zxbcdt, [d_z, conv_dim, h], dim=-1)
    xbc = causal_conv1d(xbc.transpose(1, 2), weight, bias, activation=activation, seq_idx=seq_idx)
    x, B, C = torch.split(xbc.transpose(1, 2), [d_x, d_b, d_c], dim=-1)
    return z, x, B, C, dt
