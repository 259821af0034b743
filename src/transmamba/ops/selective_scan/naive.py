"""The executable spec of Mamba-1's selective scan: the recurrence one token at a time (fp32), and the
one-token decode step in plain PyTorch. Equations in `transmamba.ops.selective_scan`'s docstring."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops.selective_scan.args import _cdt, _check_args, _effective_delta, _finish, _grouped


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    seq_idx: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
):
    """The recurrence, one step at a time (fp32). Arguments as `selective_scan`."""
    g = _check_args("selective_scan_ref", u, delta, A, B, C, D, z, delta_bias, seq_idx, initial_state)
    b, d, l = u.shape
    n = A.shape[1]
    ct = _cdt(u)
    uf = u.to(ct)
    dt = _effective_delta(delta, delta_bias, delta_softplus).to(ct)  # (b, d, l)
    Af = A.to(ct)
    Bg = _grouped(B).to(ct).repeat_interleave(d // g, dim=1)  # (b, d, n, l)
    Cg = _grouped(C).to(ct).repeat_interleave(d // g, dim=1)  # (b, d, n, l)
    h = u.new_zeros(b, d, n, dtype=ct) if initial_state is None else initial_state.to(ct)
    ys = []
    # unbind once: indexing a tensor per step would cost a full-size gradient buffer per step in backward
    dts, us, Bs, Cs = dt.unbind(-1), uf.unbind(-1), Bg.unbind(-1), Cg.unbind(-1)
    for t in range(l):
        if seq_idx is not None and t > 0:
            keep = (seq_idx[:, t] == seq_idx[:, t - 1]).to(h.dtype)[:, None, None]  # (b, 1, 1)
            h = h * keep
        dA = torch.exp(dts[t][:, :, None] * Af)  # (b, d, n)
        h = dA * h + (dts[t] * us[t])[:, :, None] * Bs[t]
        ys.append((h * Cs[t]).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=-1) if l > 0 else uf.new_zeros(b, d, 0)
    out = _finish(y, uf, D, z, u.dtype)
    return (out, h) if return_last_state else out


def selective_state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, *, inplace: bool, g: int):
    """One decode token in PyTorch (arguments checked by `selective_state_update`); g = ngroups of B/C.

    h' = exp(Δ A) h + Δ x B,  y = Σ_n C h' + D x,  y *= silu(z),
    Δ = softplus(dt + dt_bias) or dt + dt_bias.
    """
    b, d = x.shape
    n = A.shape[1]
    ct = _cdt(x)
    dtf = dt.to(ct)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(ct)
    if dt_softplus:
        dtf = F.softplus(dtf)
    Bd = B.to(ct).reshape(b, g, n).repeat_interleave(d // g, dim=1)  # (b, d, n)
    Cd = C.to(ct).reshape(b, g, n).repeat_interleave(d // g, dim=1)
    xf = x.to(ct)
    new = torch.exp(dtf.unsqueeze(-1) * A.to(ct)) * state.to(ct) + (dtf * xf).unsqueeze(-1) * Bd
    y = (new * Cd).sum(-1)
    if D is not None:
        y = y + D.to(ct) * xf
    if z is not None:
        y = y * F.silu(z.to(ct))
    if inplace:
        state.copy_(new)
        return y.to(x.dtype), state
    return y.to(x.dtype), new.to(state.dtype)
