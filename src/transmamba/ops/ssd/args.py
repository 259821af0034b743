"""Argument checks and small shared pieces of the SSD ops (`ssd`, `ssd_naive`, `ssd_chunked`, `ssd_step`,
`ssd_final_state`).

Layouts (mamba_ssm's `mamba_chunk_scan_combined`):

    x (b, l, h, p)   dt (b, l, h)   A (h,)   B, C (b, l, g, n)   D (h,) or (h, p)   z (b, l, h, p)
    dt_bias (h,)     initial_state (b, h, p, n)   seq_idx (b, l) integer, non-decreasing per row

g divides h; head i reads group i // (h // g).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transmamba.ops.checks import check_divides, check_shape

# The SSD chunk length every generic default refers to (the op, the Mamba-2 / TransMamba layer, ModelConfig):
# Mamba-2's own default. Results do not depend on it beyond rounding order; it is a speed knob. On the CPU
# the dispatch in `transmamba.ops.ssd` caps it at 64 (the fastest chunk length there).
DEFAULT_CHUNK_SIZE = 256


@dataclass(frozen=True)
class SSDDims:
    batch: int
    seqlen: int
    nheads: int
    headdim: int
    ngroups: int
    dstate: int


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 inputs are computed in fp64 (for references); everything else in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_4d(op: str, name: str, t: torch.Tensor, what: str) -> None:
    if t.dim() != 4:
        raise ValueError(f"{op}: {name} must have shape {what}, got {tuple(t.shape)}")


def check_ssd_args(
    op: str,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor | None,
    *,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> SSDDims:
    """Validate the sequence-form arguments; raise ValueError naming op, argument, shape and expectation."""
    _check_4d(op, "x", x, "(batch, seqlen, nheads, headdim)")
    b, l, h, p = x.shape
    _check_4d(op, "B", B, "(batch, seqlen, ngroups, dstate)")
    g, n = B.shape[2], B.shape[3]
    check_shape(op, "B", B, (b, l, None, None))
    check_divides(op, "ngroups (B.shape[2])", g, "nheads (x.shape[2])", h)
    if C is not None:
        check_shape(op, "C", C, (b, l, g, n))
    check_shape(op, "dt", dt, (b, l, h))
    check_shape(op, "A", A, (h,))
    if D is not None and D.dim() != 1:
        check_shape(op, "D", D, (h, p))
    elif D is not None:
        check_shape(op, "D", D, (h,))
    if z is not None:
        check_shape(op, "z", z, (b, l, h, p))
    if dt_bias is not None:
        check_shape(op, "dt_bias", dt_bias, (h,))
    if initial_state is not None:
        check_shape(op, "initial_state", initial_state, (b, h, p, n))
    if seq_idx is not None:
        check_shape(op, "seq_idx", seq_idx, (b, l))
        if seq_idx.is_floating_point() or seq_idx.is_complex() or seq_idx.dtype == torch.bool:
            raise ValueError(f"{op}: seq_idx must be an integer tensor, got dtype {seq_idx.dtype}")
        if l > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
            raise ValueError(
                f"{op}: seq_idx of shape {tuple(seq_idx.shape)} must be non-decreasing along seqlen"
            )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")
    return SSDDims(b, l, h, p, g, n)


def check_step_args(
    op: str,
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
) -> SSDDims:
    """Validate the single-token arguments of `ssd_step`."""
    if x.dim() != 3:
        raise ValueError(f"{op}: x must have shape (batch, nheads, headdim), got {tuple(x.shape)}")
    b, h, p = x.shape
    if B.dim() != 3:
        raise ValueError(f"{op}: B must have shape (batch, ngroups, dstate), got {tuple(B.shape)}")
    check_shape(op, "B", B, (b, None, None))
    g, n = B.shape[1], B.shape[2]
    check_divides(op, "ngroups (B.shape[1])", g, "nheads (x.shape[1])", h)
    check_shape(op, "C", C, (b, g, n))
    check_shape(op, "state", state, (b, h, p, n))
    check_shape(op, "dt", dt, (b, h))
    check_shape(op, "A", A, (h,))
    if D is not None and D.dim() != 1:
        check_shape(op, "D", D, (h, p))
    elif D is not None:
        check_shape(op, "D", D, (h,))
    if z is not None:
        check_shape(op, "z", z, (b, h, p))
    if dt_bias is not None:
        check_shape(op, "dt_bias", dt_bias, (h,))
    return SSDDims(b, 1, h, p, g, n)


def effective_dt(
    dt: torch.Tensor, dt_bias: torch.Tensor | None, softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """dt_eff = softplus(dt + dt_bias) if softplus else dt + dt_bias, in `dtype` (dt_bias is per head)."""
    out = dt.to(dtype)
    if dt_bias is not None:
        out = out + dt_bias.to(dtype)
    return F.softplus(out) if softplus else out


def skip_and_gate(
    y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    """y + D*x (D (h,) or (h, p), heads at dim -2), then * silu(z); all in y's dtype."""
    if D is not None:
        Df = D.to(y.dtype)
        y = y + x.to(y.dtype) * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y
