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

* `selective_scan_ref` (`naive.py`) — the sequential recurrence, one time step at a time. The executable spec.
* `selective_scan_chunked` — the CPU path: a custom autograd Function that walks the sequence chunk by
  chunk, keeps only the state entering each chunk, and recomputes a chunk's states in the backward
  (`chunked.py`). Memory O(b·d·l + b·d·n·(l/chunk + chunk)), never
  (b, d, l, n). (Its predecessor ran all chunks at once under plain autograd and kept several (b, d, l, n)
  tensors; experiments/scan_memory_cpu.py measures both.)
* the Triton kernel `transmamba.ops.selective_scan.triton.selective_scan_triton` for CUDA tensors, when
  present.

`selective_scan(..., impl="auto")` dispatches: Triton on CUDA (unless TRANSMAMBA_DISABLE_TRITON is set or the
kernel module is missing), else the chunked version. `selective_state_update` is the one-token decode step.
"""

from __future__ import annotations

import torch

from transmamba.ops import backend
from transmamba.ops._callable_module import make_module_callable
from transmamba.ops.checks import check_divides, check_shape
from transmamba.ops.selective_scan.chunked import selective_scan_chunked
from transmamba.ops.selective_scan.naive import selective_scan_ref, selective_state_update_torch

__all__ = [
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_chunked",
    "selective_state_update",
]

_IMPLS = ("auto", "ref", "chunked", "triton")


_TRITON_FN = None
_TRITON_TRIED = False


def _triton_scan():
    """The Triton kernel function, or None when triton or the kernel module is missing (imported lazily)."""
    global _TRITON_FN, _TRITON_TRIED
    if not _TRITON_TRIED:
        _TRITON_TRIED = True
        try:
            from transmamba.ops.selective_scan.triton import selective_scan_triton
        except ModuleNotFoundError as err:  # no triton, or the kernel module is not there (yet)
            if err.name not in ("triton", "transmamba.ops.selective_scan.triton"):
                raise
        else:
            _TRITON_FN = selective_scan_triton
    return _TRITON_FN


def _use_triton(u: torch.Tensor) -> bool:
    return backend.use_triton(u) and _triton_scan() is not None


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
        from transmamba.ops.selective_scan.triton import selective_state_update_triton

        return selective_state_update_triton(
            state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, inplace=inplace
        )
    return selective_state_update_torch(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, inplace=inplace, g=g
    )


make_module_callable(__name__, "selective_scan")  # `transmamba.ops.selective_scan(...)` calls it
