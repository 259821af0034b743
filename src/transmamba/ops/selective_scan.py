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
* `selective_scan_chunked` — chunk-parallel, plain torch ops (autograd works). Each step is the affine
  map h -> a_t h + b_t with a_t = exp(Δ_t A) ∈ (0, 1] and b_t = Δ_t B_t u_t. Time is cut into chunks of
  L ≈ sqrt(l); all chunks run their L steps at once from a zero state, a loop of l/L steps carries the
  state from chunk to chunk, and h_t = x_t + exp(S_t) · h_entering with S_t the in-chunk cumsum of Δ A
  (≤ 0). Only exp of non-positive numbers appears, so nothing overflows. About 2·sqrt(l) Python steps
  instead of l.
  (Tried first and dropped: a quadratic-in-chunk form exp(S_t - S_s) — with a decay per (d, n) pair it needs
  an (L, L, n) tensor per channel and ran ~20x slower on a CPU; a Hillis-Steele log-depth scan — ~2x slower.)
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
# chunked parallel version
# ----------------------------------------------------------------------------------------------------------


def _auto_chunk(l: int) -> int:
    """Chunk length that balances the two loops (L steps inside chunks + l/L steps across): ~sqrt(l)."""
    L = 8
    while L * L < l:
        L *= 2
    return L


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
    """Chunk-parallel scan in plain torch ops (autograd works); fp32 inside (fp64 inputs stay fp64).

    Time is cut into nc chunks of L = chunk_size (default ~sqrt(l), a power of two ≥ 8):

    1. inside all chunks at once, L steps of x_t = a_t x_{t-1} + b_t from a zero state, on (b, d, nc, n)
       tensors, with a_t = exp(Δ_t A) (0 at a document start) and b_t = Δ_t B_t u_t;
    2. a_cum_t = exp(S_t) with S_t = Σ_{r≤t in chunk} Δ_r A ≤ 0 (cumsum; masked to 0 after a document start);
    3. nc steps carry the state across chunks: H_{c+1} = a_cum_end · H_c + x_end;
    4. every state is h_t = x_t + a_cum_t · H_c and y_t = C_t · h_t (+ D u_t, gate).

    Only exp of non-positive numbers and products of numbers in [0, 1] appear: nothing overflows. Python
    loops run L + nc ≈ 2 sqrt(l) steps instead of l. Arguments as `selective_scan`.
    """
    g = _check_args("selective_scan_chunked", u, delta, A, B, C, D, z, delta_bias, seq_idx, initial_state)
    b, d, l = u.shape
    if chunk_size is None:
        chunk_size = _auto_chunk(l)
    if chunk_size <= 0:
        raise ValueError(f"selective_scan_chunked: chunk_size must be positive, got {chunk_size}")
    n = A.shape[1]
    h = d // g  # channels per group
    ct = _cdt(u)
    uf = u.to(ct)
    dt = _effective_delta(delta, delta_bias, delta_softplus).to(ct)  # (b, d, l)
    Bg, Cg = _grouped(B).to(ct), _grouped(C).to(ct)  # (b, g, n, l)

    L = min(chunk_size, max(l, 1))
    nc = -(-l // L)
    pad = nc * L - l
    x = dt * uf  # (b, d, l): Δ_t u_t
    if pad:
        # padded steps have Δ = 0: decay 1 and no input, so the last state passes through unchanged
        dt = F.pad(dt, (0, pad))
        x = F.pad(x, (0, pad))
        Bg = F.pad(Bg, (0, pad))
        Cg = F.pad(Cg, (0, pad))
    # layouts (b, g, h, c, L, n): channels split into groups, time into chunks
    dt = dt.view(b, g, h, nc, L)
    x = x.view(b, g, h, nc, L)
    Bc = Bg.view(b, g, n, nc, L).permute(0, 1, 3, 4, 2).unsqueeze(2)  # (b, g, 1, c, L, n)
    Cc = Cg.view(b, g, n, nc, L).permute(0, 1, 3, 4, 2).unsqueeze(2)  # (b, g, 1, c, L, n)
    Ag = A.to(ct).view(1, g, h, 1, 1, n)

    dA = dt.unsqueeze(-1) * Ag  # (b, g, h, c, L, n), ≤ 0 for A ≤ 0
    a = torch.exp(dA)
    a_cum = torch.exp(torch.cumsum(dA, dim=4))  # Π of a within the chunk
    if seq_idx is not None:
        sid = seq_idx
        if pad:
            sid = torch.cat([sid, sid[:, -1:].expand(b, pad)], dim=1)
        keep = torch.ones(b, nc * L, dtype=ct, device=u.device)
        keep[:, 1:] = (sid[:, 1:] == sid[:, :-1]).to(ct)  # 0 where a new document starts: reset
        keep = keep.view(b, 1, 1, nc, L, 1)
        a = a * keep
        a_cum = a_cum * torch.cumprod(keep, dim=4)  # the entering state is gone after a reset
    bx = x.unsqueeze(-1) * Bc  # (b, g, h, c, L, n): Δ_t u_t B_t

    # 1. within every chunk from a zero state (unbind once: slicing per step would cost a full-size
    #    gradient buffer per slice in backward)
    a_steps, b_steps = a.unbind(4), bx.unbind(4)
    acc = b_steps[0]
    local = [acc]
    for t in range(1, L):
        acc = a_steps[t] * acc + b_steps[t]
        local.append(acc)
    x_cum = torch.stack(local, dim=4)  # (b, g, h, c, L, n)

    # 3. carry states across chunks
    if initial_state is None:
        state = uf.new_zeros(b, g, h, n)
    else:
        state = initial_state.to(ct).view(b, g, h, n)
    a_end, x_end = a_cum[:, :, :, :, -1].unbind(3), local[-1].unbind(3)  # nc × (b, g, h, n)
    entering = []
    for c in range(nc):
        entering.append(state)
        state = a_end[c] * state + x_end[c]
    H = torch.stack(entering, dim=3)  # (b, g, h, c, n): the state before each chunk

    # 4. outputs
    hs = x_cum + a_cum * H.unsqueeze(4)  # (b, g, h, c, L, n): every state h_t
    y = (hs * Cc).sum(-1)  # (b, g, h, c, L)
    y = y.reshape(b, d, nc * L)[:, :, :l]
    out = _finish(y, uf, D, z, u.dtype)
    if return_last_state:
        return out, state.reshape(b, d, n)
    return out


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
