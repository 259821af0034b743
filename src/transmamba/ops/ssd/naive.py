"""Mamba-2's SSD as a plain token-by-token recurrence: the executable spec, and the decode step.

Per head i (group g(i) = i // (h // g)), with dt_eff = softplus(dt + dt_bias) or dt + dt_bias:

    S_t = exp(dt_t * A_i) * S_{t-1} + dt_t * x_t B_tᵀ          S_t is (p, n), x_t (p,), B_t (n,)
    y_t = S_t C_t + D_i * x_t                                    then y_t *= silu(z_t) when z is given

S_{-1} = initial_state (or 0). With `seq_idx`, S is reset to 0 before the first token of every document
after the row's first one (initial_state belongs to the first document only). Computation is in fp32
(fp64 for fp64 inputs); y is cast back to x's dtype, the final state is fp32 (fp64).
"""

from __future__ import annotations

import torch

from transmamba.ops.ssd.args import (
    DEFAULT_CHUNK_SIZE,
    check_ssd_args,
    check_step_args,
    compute_dtype,
    effective_dt,
    skip_and_gate,
)


def _heads_of_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(..., g, n) -> (..., h, n): head i reads group i // (h // g)."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


def _recur(
    state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor
) -> torch.Tensor:
    """One recurrence step. state (b, h, p, n), x (b, h, p), dt (b, h), A (h,), B (b, h, n), all one dtype."""
    decay = torch.exp(dt * A)  # (b, h)
    return state * decay[:, :, None, None] + (dt[:, :, None] * x)[..., None] * B[:, :, None, :]


def ssd_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SSD by the recurrence, one token at a time (O(l) Python steps: a spec, not a kernel).

    Same arguments and results as `transmamba.ops.ssd.ssd`; `chunk_size` is checked and otherwise unused.
    Returns y (b, l, h, p) [, final_state (b, h, p, n)].
    """
    dims = check_ssd_args(
        "ssd_naive", x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
        initial_state=initial_state, seq_idx=seq_idx, chunk_size=chunk_size,
    )
    b, l, h, p, n = dims.batch, dims.seqlen, dims.nheads, dims.headdim, dims.dstate
    ct = compute_dtype(x)
    xf = x.to(ct)
    dtf = effective_dt(dt, dt_bias, dt_softplus, ct)  # (b, l, h)
    Af = A.to(ct)
    Bh = _heads_of_groups(B.to(ct), h)  # (b, l, h, n)
    Ch = _heads_of_groups(C.to(ct), h)
    if initial_state is None:
        state = xf.new_zeros(b, h, p, n)
    else:
        state = initial_state.to(ct)
    ys = []
    for t in range(l):
        if seq_idx is not None and t > 0:
            same_doc = (seq_idx[:, t] == seq_idx[:, t - 1]).to(ct)  # (b,)
            state = state * same_doc[:, None, None, None]
        state = _recur(state, xf[:, t], dtf[:, t], Af, Bh[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(b, 0, h, p)
    y = skip_and_gate(y, xf, D, z).to(x.dtype)
    return (y, state) if return_final_state else y


def ssd_step_naive(
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
    dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token of SSD, functional (the input state is not modified).

    state (b, h, p, n), x (b, h, p), dt (b, h), A (h,), B, C (b, g, n), D (h,) or (h, p), z (b, h, p),
    dt_bias (h,). Returns y (b, h, p) in x's dtype and new_state (b, h, p, n) in state's dtype.
    """
    dims = check_step_args("ssd_step", state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias)
    h = dims.nheads
    ct = compute_dtype(x)
    xf = x.to(ct)
    dtf = effective_dt(dt, dt_bias, dt_softplus, ct)  # (b, h)
    new = _recur(state.to(ct), xf, dtf, A.to(ct), _heads_of_groups(B.to(ct), h))
    y = torch.einsum("bhpn,bhn->bhp", new, _heads_of_groups(C.to(ct), h))
    y = skip_and_gate(y, xf, D, z)
    return y.to(x.dtype), new.to(state.dtype)
