"""Mamba-1's selective scan on the CPU in memory bounded by the chunk, not the sequence.

The core recurrence, per batch row, channel d (of group g) and state index n:

    h_t = a_t ⊙ h_{t-1} + x_t,    a_t = exp(Δ_t A) · keep_t,    x_t = Δ_t u_t B_t,    y_t = Σ_n C_t ⊙ h_t

(keep_t is 0 where a new document starts, else 1). Autograd over the plain-torch version keeps every h_t,
a_t, x_t: several (b, d, l, n) tensors. `ScanFunction` is a custom autograd Function that instead

* forward: walks the sequence chunk by chunk (chunk M tokens), computing the states of one chunk at a time
  from the state entering it, and keeps only the entering states (b, d, n) of every chunk;
* backward: walks the chunks in reverse; in each it recomputes the chunk's states from its saved entering
  state, runs the adjoint recurrence g_t = C_t dy_t + a_{t+1} ⊙ g_{t+1} (g_t = ∂loss/∂h_t; the state
  gradient arriving from the next chunk enters as g at the chunk's last token), and reads off

      ∂a_t = g_t ⊙ h_{t-1}  ->  ∂Δ_t += Σ_n ∂a_t a_t A,   ∂A += Σ_{b,t} ∂a_t a_t Δ_t
      ∂x_t = g_t            ->  ∂u_t = Δ_t Σ_n g_t B_t,  ∂Δ_t += u_t Σ_n g_t B_t,  ∂B_t = Σ_{d∈g} Δ_t u_t g_t
      ∂C_t = Σ_{d∈g} dy_t h_t,   ∂h_entering = a_first ⊙ g_first

Saved for backward: the inputs (O(b·d·l + b·g·n·l)) and one state per chunk (O(b·d·n·l/M)); working memory
is O(b·d·n·M). This is the same plan as mamba_ssm's fused CUDA kernel (recompute inside a chunk instead
of storing), written with torch ops.

Inside a chunk both recurrences run by `scan_states`: the M steps are cut into sub-chunks of L ≈ sqrt(M),
all sub-chunks take their L steps at once from a zero state, then nc = M/L steps carry the state across
sub-chunks (h = local + cumprod(a) · entering). Only products of numbers in [0, 1] appear: nothing
overflows. Python steps per chunk: about 2·sqrt(M).
"""

from __future__ import annotations

import torch

from transmamba.ops.selective_scan.args import _cdt, _check_args, _effective_delta, _finish, _grouped

__all__ = ["ScanFunction", "scan_states", "auto_chunk", "selective_scan_chunked"]

# Elements of one (b, d, M, n) working tensor the automatic chunk length aims for (16 MiB in fp32); about
# eight such tensors are alive at once in the backward.
_CHUNK_ELEMENTS = 1 << 22
_MIN_CHUNK, _MAX_CHUNK = 16, 256


def auto_chunk(b: int, d: int, n: int, l: int) -> int:
    """Chunk length M: the largest power of two in [16, 256] with b·d·n·M ≤ 2^22 (and no longer than l
    needs); memory per chunk stays bounded whatever the sequence length."""
    m = _MAX_CHUNK
    while m > _MIN_CHUNK and b * d * n * m > _CHUNK_ELEMENTS:
        m //= 2
    while m > _MIN_CHUNK and m // 2 >= l:
        m //= 2
    return m


def _sub_chunk(m: int) -> int:
    """Sub-chunk length L ≈ sqrt(m), a power of two ≥ 4."""
    s = 4
    while s * s < m:
        s *= 2
    return s


def scan_states(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor, *, reverse: bool = False) -> torch.Tensor:
    """All states of h_t = a_t ⊙ h_{t-1} + x_t for t = 0..m-1 from h_{-1} = h0 (no autograd); with
    `reverse`, of h_t = a_t ⊙ h_{t+1} + x_t for t = m-1..0 from h_m = h0.

    Time-major: a, x (m, ...); h0 (...) -> h (m, ...). Sub-chunk parallel (module docstring); time leads so
    that every step reads and writes whole contiguous blocks. a and x are used as work space (overwritten):
    pass copies of tensors still needed.
    """
    m, rest = a.shape[0], a.shape[1:]
    L = min(_sub_chunk(m), m)
    nc = -(-m // L)
    pad = nc * L - m
    if pad:  # identity steps at the end (a = 1, x = 0): in either direction they pass the state through
        a = torch.cat([a, a.new_ones(pad, *rest)])
        x = torch.cat([x, x.new_zeros(pad, *rest)])
    a = a.reshape(nc, L, *rest)
    h = x.reshape(nc, L, *rest)  # becomes the local states, then all states
    steps = range(L - 2, -1, -1) if reverse else range(1, L)
    prev = 1 if reverse else -1  # offset of the step a state comes from
    for t in steps:
        h[:, t].addcmul_(a[:, t], h[:, t + prev])
    a_cum = a  # (nc, L, ...): decay from the sub-chunk's entry through t (a cumulative product, in place)
    for t in steps:
        a_cum[:, t].mul_(a_cum[:, t + prev])
    exit_ = 0 if reverse else L - 1  # the step whose state leaves the sub-chunk
    state = h0
    entering = [h0] * nc
    for c in (range(nc - 1, -1, -1) if reverse else range(nc)):
        entering[c] = state
        state = torch.addcmul(h[c, exit_], a_cum[c, exit_], state)
    h.addcmul_(a_cum, torch.stack(entering).unsqueeze(1))
    return h.reshape(nc * L, *rest)[:m]


class _Chunk:
    """One chunk [t0, t1) of the inputs, time-major: (m, b, g, r, n or 1), r = d / g channels per group."""

    def __init__(self, u, dt, A, B, C, keep, t0: int, t1: int):
        b, d, _ = u.shape
        g, n = B.shape[1], B.shape[2]
        r = d // g
        m = t1 - t0
        self.u = u[:, :, t0:t1].permute(2, 0, 1).reshape(m, b, g, r, 1)
        self.dt = dt[:, :, t0:t1].permute(2, 0, 1).reshape(m, b, g, r, 1)
        self.B = B[:, :, :, t0:t1].permute(3, 0, 1, 2).unsqueeze(3)  # (m, b, g, 1, n)
        self.C = C[:, :, :, t0:t1].permute(3, 0, 1, 2).unsqueeze(3)
        self.A = A.reshape(g, r, n)
        a = torch.exp(self.dt * self.A)  # (m, b, g, r, n)
        if keep is not None:
            a.mul_(keep[:, t0:t1].t().reshape(m, b, 1, 1, 1))
        self.a = a

    def inputs(self) -> torch.Tensor:
        """x_t = Δ_t u_t B_t, (m, b, g, r, n)."""
        return (self.dt * self.u) * self.B


def _put(dst: torch.Tensor, t0: int, t1: int, chunk: torch.Tensor) -> None:
    """Write a time-major chunk (m, a, b, c) into dst (a, b, c, l) at [t0, t1)."""
    dst[..., t0:t1].copy_(chunk.permute(1, 2, 3, 0))


class ScanFunction(torch.autograd.Function):
    """(u, dt, A, B, C, keep, h0, chunk) -> (y, h_last); see the module docstring.

    u, dt (b, d, l) with dt already biased / softplussed; A (d, n); B, C (b, g, n, l); keep (b, l) 0/1 or
    None; h0 (b, d, n). All in one float dtype. y (b, d, l) = Σ_n C h (no D skip, no gate); h_last (b, d, n).
    Differentiable in u, dt, A, B, C and h0.
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C, keep, h0, chunk: int):
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        r = d // g
        y = u.new_empty(b, g, r, l)
        state = h0.reshape(b, g, r, n)
        entering = []
        for t0 in range(0, l, chunk):
            t1 = min(t0 + chunk, l)
            ch = _Chunk(u, dt, A, B, C, keep, t0, t1)
            entering.append(state)
            hs = scan_states(ch.a, ch.inputs(), state)  # (m, b, g, r, n); ch.a is used up
            _put(y, t0, t1, (hs @ ch.C.transpose(-1, -2)).squeeze(-1))  # Σ_n h C
            state = hs[-1].clone()
            del hs, ch
        ctx.chunk = chunk
        ctx.save_for_backward(u, dt, A, B, C, keep, *entering)
        return y.reshape(b, d, l), state.reshape(b, d, n)

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, dt, A, B, C, keep, *entering = ctx.saved_tensors
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        r = d // g
        chunk = ctx.chunk
        du, ddt = u.new_empty(b, g, r, l), u.new_empty(b, g, r, l)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros(g, r, n, dtype=A.dtype, device=A.device)
        dy = (torch.zeros_like(u) if dy is None else dy).reshape(b, g, r, l)
        g_next = (torch.zeros(b, d, n, dtype=u.dtype, device=u.device) if dh_last is None else dh_last)
        g_next = g_next.reshape(b, g, r, n)  # ∂loss/∂(state leaving the chunk), from later tokens
        starts = list(range(0, l, chunk))
        for i in reversed(range(len(starts))):
            t0 = starts[i]
            t1 = min(t0 + chunk, l)
            m = t1 - t0
            ch = _Chunk(u, dt, A, B, C, keep, t0, t1)
            h_in = entering[i]
            hs = scan_states(ch.a.clone(), ch.inputs(), h_in)  # (m, b, g, r, n): recomputed states
            dyc = dy[..., t0:t1].permute(3, 0, 1, 2).unsqueeze(-1)  # (m, b, g, r, 1)
            _put(dC, t0, t1, (dyc.transpose(-1, -2) @ hs).squeeze(-2))  # Σ_r dy h
            # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, a reverse scan (the state gradient from later
            # chunks enters at the last token with factor 1)
            a_next = torch.empty_like(ch.a)
            a_next[:-1] = ch.a[1:]
            a_next[-1] = 1.0
            gs = scan_states(a_next, dyc * ch.C, g_next, reverse=True)  # (m, b, g, r, n)
            del a_next
            # ∂a_t = g_t h_{t-1}; through a = exp(Δ A) keep: ∂(Δ A) = ∂a · a
            da = gs * ch.a
            da[1:] *= hs[:-1]
            da[0] *= h_in
            del hs
            ddt_c = (da * ch.A).sum(-1)  # (m, b, g, r)
            dA += (da * ch.dt).sum((0, 1))
            del da
            g_next = gs[0] * ch.a[0]
            gB = (gs @ ch.B.transpose(-1, -2)).squeeze(-1)  # (m, b, g, r): Σ_n g_t B_t
            _put(dB, t0, t1, ((ch.dt * ch.u).transpose(-1, -2) @ gs).squeeze(-2))  # Σ_r Δ u g
            del gs
            ddt_c += gB * ch.u.reshape(m, b, g, r)
            _put(ddt, t0, t1, ddt_c)
            _put(du, t0, t1, gB * ch.dt.reshape(m, b, g, r))
        return (du.reshape(b, d, l), ddt.reshape(b, d, l), dA.reshape(d, n), dB, dC, None,
                g_next.reshape(b, d, n), None)


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

    The recurrence runs in `ScanFunction` (above): the forward keeps one state per
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
