"""Mamba-1's selective scan (S6), in mamba_ssm's tensor layout.

Per channel d and state index n, with Δ = delta (+ delta_bias, softplus when asked):

    h_t[d, n] = exp(Δ_t[d] · A[d, n]) · h_{t-1}[d, n] + Δ_t[d] · B_t[g(d), n] · u_t[d]
    y_t[d]    = Σ_n C_t[g(d), n] · h_t[d, n] + D[d] · u_t[d]
    y_t[d]   *= silu(z_t[d])                                          (when z is given)

g(d) = d // (dim / ngroups) is the group of channel d when B, C are grouped (b, g, n, l).
With `seq_idx` (b, l) the state is reset to zero wherever the document id changes, so a packed row gives the
same outputs as separate rows. `initial_state` (b, d, n) is the state before position 0; it belongs to the
first token's document.

Three implementations:

* `selective_scan_ref` — the sequential recurrence, one time step at a time. The executable spec.
* `selective_scan_chunked` — the CPU path: a custom autograd Function that walks the sequence chunk by
  chunk, keeps only the state entering each chunk, and recomputes a chunk's states in the backward
  (`transmamba.ops.selective_scan_chunked`). Memory O(b·d·l + b·d·n·(l/chunk + chunk)), never
  (b, d, l, n). (Its predecessor ran all chunks at once under plain autograd and kept several (b, d, l, n)
  tensors; benchmarks/scan_memory_cpu.py measures both.)
* the Triton kernel `transmamba.ops.triton.selective_scan.selective_scan_triton` for CUDA tensors, when
  present.

`selective_scan(..., impl="auto")` dispatches: Triton on CUDA (unless TRANSMAMBA_DISABLE_TRITON is set or the
kernel module is missing), else the chunked version. `selective_state_update` is the one-token decode step.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from transmamba.ops._callable_module import make_module_callable
from transmamba.ops.checks import check_divides, check_shape
from transmamba.ops.selective_scan_chunked import ScanFunction, auto_chunk

__all__ = [
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_chunked",
    "selective_state_update",
]

_IMPLS = ("auto", "ref", "chunked", "triton")


# ----------------------------------------------------------------------------------------------------------
# argument handling shared by the implementations
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# sequential reference
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# chunked version (memory bounded by the chunk; see ops/selective_scan_chunked.py)
# ----------------------------------------------------------------------------------------------------------


def selective_scan_chunked(
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
    chunk_size: int | None = None,
):
    """The scan chunk by chunk with a custom backward; fp32 inside (fp64 inputs stay fp64).

    The recurrence runs in `ScanFunction` (ops/selective_scan_chunked.py): the forward keeps one state per
    chunk of `chunk_size` tokens, the backward recomputes each chunk's states from it. Memory is
    O(b·d·l + b·d·n·(l / chunk + chunk)) instead of several (b, d, l, n) tensors. The bias / softplus of Δ,
    the D skip and the gate are elementwise and stay in autograd. chunk_size None picks the largest power of
    two in [16, 256] with b·d·n·chunk ≤ 2^22. Arguments as `selective_scan`.
    """
    _check_args("selective_scan_chunked", u, delta, A, B, C, D, z, delta_bias, seq_idx, initial_state)
    b, d, l = u.shape
    n = A.shape[1]
    if chunk_size is None:
        chunk_size = auto_chunk(b, d, n, l)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"selective_scan_chunked: chunk_size must be a positive int, got {chunk_size!r}")
    ct = _cdt(u)
    uf = u.to(ct)
    dt = _effective_delta(delta, delta_bias, delta_softplus).to(ct)  # (b, d, l)
    Bg, Cg = _grouped(B).to(ct), _grouped(C).to(ct)  # (b, g, n, l)
    h0 = u.new_zeros(b, d, n, dtype=ct) if initial_state is None else initial_state.to(ct)
    if l == 0:
        y = uf.new_zeros(b, d, 0)
        out = _finish(y, uf, D, z, u.dtype)
        return (out, h0) if return_last_state else out
    keep = None
    if seq_idx is not None:
        keep = torch.ones(b, l, dtype=ct, device=u.device)
        keep[:, 1:] = (seq_idx[:, 1:] == seq_idx[:, :-1]).to(ct)  # 0 where a new document starts
    y, last = ScanFunction.apply(uf, dt, A.to(ct), Bg, Cg, keep, h0, chunk_size)
    out = _finish(y, uf, D, z, u.dtype)
    return (out, last) if return_last_state else out


# ----------------------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------------------

_TRITON_FN = None
_TRITON_TRIED = False


def _triton_scan():
    """The Triton kernel function, or None when triton or the kernel module is missing (imported lazily)."""
    global _TRITON_FN, _TRITON_TRIED
    if not _TRITON_TRIED:
        _TRITON_TRIED = True
        try:
            from transmamba.ops.triton.selective_scan import selective_scan_triton
        except ModuleNotFoundError as err:  # no triton, or the kernel module is not there (yet)
            if err.name not in ("triton", "transmamba.ops.triton", "transmamba.ops.triton.selective_scan"):
                raise
        else:
            _TRITON_FN = selective_scan_triton
    return _TRITON_FN


def _use_triton(u: torch.Tensor) -> bool:
    return u.is_cuda and not os.environ.get("TRANSMAMBA_DISABLE_TRITON") and _triton_scan() is not None


def selective_scan(
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
    impl: str = "auto",
    chunk_size: int | None = None,
):
    """Mamba-1 selective scan (mamba_ssm's `selective_scan_fn` layout).

    Args:
        u: (b, d, l) input.
        delta: (b, d, l) step sizes Δ before bias/softplus.
        A: (d, n) state matrix (negative for a stable scan; Mamba uses -exp(A_log)).
        B, C: (b, n, l), or grouped (b, g, n, l) with g dividing d (channel d uses group d // (d/g)).
        D: (d,) skip. z: (b, d, l) gate, y * silu(z).
        delta_bias: (d,) added to delta; delta_softplus: apply softplus after the bias.
        return_last_state: also return the state after the last token, (b, d, n) fp32.
        seq_idx: (b, l) int document ids, non-decreasing per row; the state resets at every change.
        initial_state: (b, d, n) state before position 0 (our extension; mamba_ssm has none).
        impl: "auto" | "ref" | "chunked" | "triton". chunk_size: chunk length of the chunked version.

    Returns:
        y (b, d, l) in u's dtype [, last_state (b, d, n)].
    """
    if impl not in _IMPLS:
        raise ValueError(f"selective_scan: impl must be one of {_IMPLS}, got {impl!r}")
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, seq_idx)
    if impl == "triton" or (impl == "auto" and _use_triton(u)):
        fn = _triton_scan()
        if fn is None:
            raise RuntimeError("selective_scan: impl='triton' but the Triton kernel is not available")
        return fn(*args, initial_state=initial_state)
    if impl == "ref":
        return selective_scan_ref(*args, initial_state=initial_state)
    return selective_scan_chunked(*args, initial_state=initial_state, chunk_size=chunk_size)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    *,
    inplace: bool = False,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of the scan; functional (`state` is not modified) unless `inplace`.

    Args:
        state: (b, d, n).  x, dt: (b, d).  A: (d, n).  B, C: (b, n) or grouped (b, g, n).
        D: (d,).  z: (b, d).  dt_bias: (d,).
        inplace: write the new state into `state` and return `state` itself as the new state.
        impl: "auto" (the Triton step kernel for CUDA tensors when no gradient is needed) | "torch" |
            "triton".
    Returns:
        y (b, d) in x's dtype, new_state (b, d, n) in state's dtype.
    """
    op = "selective_state_update"
    if x.dim() != 2:
        raise ValueError(f"{op}: x must have shape (batch, dim), got {tuple(x.shape)}")
    b, d = x.shape
    if A.dim() != 2:
        raise ValueError(f"{op}: A must have shape ({d}, dstate), got {tuple(A.shape)}")
    check_shape(op, "A", A, (d, None))
    n = A.shape[1]
    check_shape(op, "state", state, (b, d, n))
    check_shape(op, "dt", dt, (b, d))
    if B.dim() == 2:
        g = 1
        check_shape(op, "B", B, (b, n))
        check_shape(op, "C", C, (b, n))
    elif B.dim() == 3:
        g = B.shape[1]
        check_shape(op, "B", B, (b, g, n))
        check_divides(op, "ngroups", g, "dim", d)
        check_shape(op, "C", C, (b, g, n))
    else:
        raise ValueError(f"{op}: B must have shape ({b}, {n}) or ({b}, ngroups, {n}), got {tuple(B.shape)}")
    if D is not None:
        check_shape(op, "D", D, (d,))
    if z is not None:
        check_shape(op, "z", z, (b, d))
    if dt_bias is not None:
        check_shape(op, "dt_bias", dt_bias, (d,))
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"{op}: impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    tensors = (state, x, dt, A, B, C, D, z, dt_bias)
    no_grad = not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
    if impl == "triton" or (impl == "auto" and no_grad and x.dtype != torch.float64 and _use_triton(x)):
        if _triton_scan() is None:
            raise RuntimeError(f"{op}: impl='triton' but the Triton kernel is not available")
        from transmamba.ops.triton.selective_scan import selective_state_update_triton

        return selective_state_update_triton(
            state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, inplace=inplace
        )
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


make_module_callable(__name__, "selective_scan")  # `transmamba.ops.selective_scan(...)` calls it
