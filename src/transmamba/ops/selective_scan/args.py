"""Argument checks and the elementwise pieces shared by every selective-scan implementation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops.checks import check_divides, check_shape


def _check_args(op, u, delta, A, B, C, D, z, delta_bias, seq_idx, initial_state) -> int:
    """Validate shapes; returns ngroups of B/C (1 for the ungrouped (b, n, l) layout)."""
    if u.dim() != 3:
        raise ValueError(f"{op}: u must have shape (batch, dim, seqlen), got {tuple(u.shape)}")
    b, d, l = u.shape
    check_shape(op, "delta", delta, (b, d, l))
    if A.dim() != 2:
        raise ValueError(f"{op}: A must have shape ({d}, dstate), got {tuple(A.shape)}")
    check_shape(op, "A", A, (d, None))
    n = A.shape[1]
    if B.dim() == 3:
        g = 1
        check_shape(op, "B", B, (b, n, l))
    elif B.dim() == 4:
        g = B.shape[1]
        check_shape(op, "B", B, (b, g, n, l))
        check_divides(op, "ngroups", g, "dim", d)
    else:
        raise ValueError(
            f"{op}: B must have shape ({b}, {n}, {l}) or ({b}, ngroups, {n}, {l}), got {tuple(B.shape)}"
        )
    if B.dim() == 3:
        check_shape(op, "C", C, (b, n, l))
    else:
        check_shape(op, "C", C, (b, g, n, l))
    if D is not None:
        check_shape(op, "D", D, (d,))
    if z is not None:
        check_shape(op, "z", z, (b, d, l))
    if delta_bias is not None:
        check_shape(op, "delta_bias", delta_bias, (d,))
    if seq_idx is not None:
        check_shape(op, "seq_idx", seq_idx, (b, l))
    if initial_state is not None:
        check_shape(op, "initial_state", initial_state, (b, d, n))
    return g


def _cdt(x: torch.Tensor) -> torch.dtype:
    """Compute dtype: fp64 stays fp64, everything else runs in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _effective_delta(delta, delta_bias, delta_softplus):
    dt = delta.to(_cdt(delta))
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    return dt


def _grouped(X: torch.Tensor) -> torch.Tensor:
    """B or C as (b, g, n, l)."""
    return X.unsqueeze(1) if X.dim() == 3 else X


def _finish(y, u, D, z, out_dtype):
    """Add the D skip and the silu(z) gate; y, u are (b, d, l) fp32."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)
