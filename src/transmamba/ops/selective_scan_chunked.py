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

__all__ = ["ScanFunction", "scan_states", "auto_chunk"]

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


def scan_states(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of h_t = a_t ⊙ h_{t-1} + x_t for t = 0..m-1 from h_{-1} = h0 (no autograd).

    a, x (..., m, n); h0 (..., n) -> h (..., m, n), a new tensor. Sub-chunk parallel (module docstring).
    """
    m, n = a.shape[-2], a.shape[-1]
    lead = a.shape[:-2]
    L = min(_sub_chunk(m), m)
    nc = -(-m // L)
    pad = nc * L - m
    if pad:  # identity steps: a = 1, x = 0
        a = torch.cat([a, a.new_ones(*lead, pad, n)], dim=-2)
        x = torch.cat([x, x.new_zeros(*lead, pad, n)], dim=-2)
    a = a.reshape(*lead, nc, L, n)
    h = x.reshape(*lead, nc, L, n).clone()  # becomes the local states, then all states
    for t in range(1, L):
        h[..., t, :].addcmul_(a[..., t, :], h[..., t - 1, :])
    a_cum = torch.cumprod(a, dim=-2)  # (..., nc, L, n): decay from a sub-chunk's start through t
    state = h0
    entering = []
    for c in range(nc):
        entering.append(state)
        state = torch.addcmul(h[..., c, L - 1, :], a_cum[..., c, L - 1, :], state)
    h.addcmul_(a_cum, torch.stack(entering, dim=-2).unsqueeze(-2))
    return h.reshape(*lead, nc * L, n)[..., :m, :]


class _Chunk:
    """One chunk [t0, t1) of the inputs, laid out (b, g, r, m[, n]) with r = d / g channels per group."""

    def __init__(self, u, dt, A, B, C, keep, t0: int, t1: int):
        b, d, _ = u.shape
        g, n = B.shape[1], B.shape[2]
        r = d // g
        self.shape = (b, g, r)
        self.u = u[:, :, t0:t1].reshape(b, g, r, -1)  # (b, g, r, m)
        self.dt = dt[:, :, t0:t1].reshape(b, g, r, -1)
        self.B = B[:, :, :, t0:t1].transpose(2, 3).unsqueeze(2)  # (b, g, 1, m, n)
        self.C = C[:, :, :, t0:t1].transpose(2, 3).unsqueeze(2)
        self.A = A.reshape(1, g, r, 1, n)
        a = torch.exp(self.dt.unsqueeze(-1) * self.A)  # (b, g, r, m, n)
        if keep is not None:
            a = a * keep[:, None, None, t0:t1, None]
        self.a = a

    def inputs(self) -> torch.Tensor:
        """x_t = Δ_t u_t B_t, (b, g, r, m, n)."""
        return (self.dt * self.u).unsqueeze(-1) * self.B


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
            hs = scan_states(ch.a, ch.inputs(), state)  # (b, g, r, m, n)
            y[..., t0:t1] = torch.einsum("bgrmn,bgmn->bgrm", hs, ch.C.squeeze(2))
            state = hs[..., -1, :].clone()
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
        du, ddt = torch.zeros_like(u), torch.zeros_like(dt)
        dB, dC = torch.zeros_like(B), torch.zeros_like(C)
        dA = torch.zeros(g, r, n, dtype=A.dtype, device=A.device)
        dy = (torch.zeros_like(u) if dy is None else dy).reshape(b, g, r, l)
        g_next = (torch.zeros(b, d, n, dtype=u.dtype, device=u.device) if dh_last is None else dh_last)
        g_next = g_next.reshape(b, g, r, n)  # ∂loss/∂(state leaving the chunk), from later tokens
        starts = list(range(0, l, chunk))
        for i in reversed(range(len(starts))):
            t0 = starts[i]
            t1 = min(t0 + chunk, l)
            ch = _Chunk(u, dt, A, B, C, keep, t0, t1)
            h_in = entering[i]
            hs = scan_states(ch.a, ch.inputs(), h_in)  # (b, g, r, m, n): recomputed states
            dyc = dy[..., t0:t1]  # (b, g, r, m)
            dC[:, :, :, t0:t1] = torch.einsum("bgrm,bgrmn->bgnm", dyc, hs)
            # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, run backwards in time as a forward scan
            a_next = torch.cat([ch.a[..., 1:, :], ch.a.new_ones(b, g, r, 1, n)], dim=-2)
            gs = scan_states(a_next.flip(-2), (dyc.unsqueeze(-1) * ch.C).flip(-2), g_next).flip(-2)
            # ∂a_t = g_t h_{t-1}; through a = exp(Δ A) keep: ∂(Δ A) = ∂a · a
            h_prev = torch.cat([h_in.unsqueeze(-2), hs[..., :-1, :]], dim=-2)
            del hs
            da = gs * h_prev * ch.a  # (b, g, r, m, n)
            del h_prev
            ddt_c = (da * ch.A).sum(-1)  # (b, g, r, m)
            dA += torch.einsum("bgrmn,bgrm->grn", da, ch.dt)
            g_next = gs[..., 0, :] * ch.a[..., 0, :]
            del da
            gB = (gs * ch.B).sum(-1)  # (b, g, r, m): Σ_n g_t B_t
            dB[:, :, :, t0:t1] = torch.einsum("bgrmn,bgrm->bgnm", gs, ch.dt * ch.u)
            del gs
            ddt_c += gB * ch.u
            ddt[:, :, t0:t1] = ddt_c.reshape(b, d, -1)
            du[:, :, t0:t1] = (gB * ch.dt).reshape(b, d, -1)
        return du, ddt, dA.reshape(d, n), dB, dC, None, g_next.reshape(b, d, n), None
