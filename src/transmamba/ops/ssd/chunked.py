"""Mamba-2's SSD by chunks, in plain PyTorch (differentiable by autograd), and the Memory Converter.

Split the sequence into chunks of Q tokens. Write a_t = dt_t * A (log decay of one step, per head) and
seg(t, s) = a_{s+1} + ... + a_t (s <= t), so that S_t = sum_{s<=t} exp(seg(t, s)) dt_s x_s B_sᵀ. Then for
a token t of chunk c, whose first token is c0 and whose incoming state is H_c (the state at c0 - 1):

    y_t = sum_{s=c0}^{t} (C_t·B_s) exp(seg(t, s)) dt_s x_s      intra-chunk, a masked (Q, Q) "attention"
        + exp(a_{c0} + ... + a_t) H_c C_t                       the incoming state, read through C
    H_{c+1} = exp(a_{c0} + ... + a_{c0+Q-1}) H_c + sum_{s in c} exp(seg(c0+Q-1, s)) dt_s x_s B_sᵀ

The last line is a short sequential scan over chunks (state passing); the rest are batched matmuls.
Documents (`seq_idx`): the decay between two tokens of different documents is 0. Inside chunks the
seg matrix is masked with -inf there; a chunk's state only gathers its last document's tokens; the
incoming state survives a chunk only if the chunk ends in the document the state belongs to, and is read
only by tokens of that document. `initial_state` belongs to each row's first document.

Numerics: all log decays are fp32 (fp64 for fp64 inputs) sums of the a_t themselves (never differences of
two long cumulative sums), masked with -inf before exp, so exp never sees a large positive number when
A < 0. A sequence that is not a multiple of Q is padded at the end with dt = 0 (identity steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops.ssd.args import (
    DEFAULT_CHUNK_SIZE,
    check_ssd_args,
    compute_dtype,
    effective_dt,
    skip_and_gate,
)


def _pad_seq(t: torch.Tensor, length: int, value: float | None = None) -> torch.Tensor:
    """Pad dim 1 (seqlen) at the end to `length`; value None repeats the last entry."""
    extra = length - t.shape[1]
    if extra == 0:
        return t
    if value is None:
        return torch.cat([t, t[:, -1:].expand(-1, extra, *t.shape[2:])], dim=1)
    return torch.cat([t, t.new_full((t.shape[0], extra, *t.shape[2:]), value)], dim=1)


class _Chunks:
    """Inputs cut into chunks, in the compute dtype.

    x (b, c, Q, g, r, p) with r = h // g heads per group, xdt = x * dt (same), B (b, c, Q, g, n),
    a (b, c, h, Q) per-step log decays, seq (b, c, Q) or None, prev_doc (b, c): document of each chunk's
    incoming state.
    """

    def __init__(self, x, dt, A, B, seq_idx, chunk_size, ct):
        b, l, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        self.Q = Q = min(chunk_size, l)
        self.nc = nc = -(-l // Q)
        L = nc * Q
        self.g, self.r = g, h // g
        self.x = _pad_seq(x.to(ct), L, 0.0).reshape(b, nc, Q, g, self.r, p)
        dt = _pad_seq(dt, L, 0.0).reshape(b, nc, Q, h)
        self.xdt = self.x * dt.reshape(b, nc, Q, g, self.r, 1)
        self.B = _pad_seq(B.to(ct), L, 0.0).reshape(b, nc, Q, g, n)
        self.a = (dt * A.to(ct)).transpose(2, 3)  # (b, c, h, Q)
        if seq_idx is None:
            self.seq = self.prev_doc = None
        else:
            self.seq = _pad_seq(seq_idx, L).reshape(b, nc, Q)
            last = self.seq[:, :, -1]
            self.prev_doc = torch.cat([self.seq[:, :1, 0], last[:, :-1]], dim=1)

    def decay_to_end(self) -> torch.Tensor:
        """(b, c, h, Q): exp(a_{s+1} + ... + a_{last}) for each token s of its chunk; 0 across documents."""
        shifted = F.pad(self.a[..., 1:], (0, 1))
        log = shifted.flip(-1).cumsum(-1).flip(-1)
        if self.seq is not None:
            other = self.seq != self.seq[:, :, -1:]  # (b, c, Q)
            log = log.masked_fill(other[:, :, None, :], float("-inf"))
        return torch.exp(log)

    def chunk_log_decay(self) -> torch.Tensor:
        """(b, c, h): log of the decay of a state through a whole chunk; -inf where a document ends in it."""
        total = self.a.sum(-1)
        if self.seq is not None:
            ends = self.seq[:, :, -1] != self.prev_doc  # (b, c)
            total = total.masked_fill(ends[:, :, None], float("-inf"))
        return total

    def chunk_states(self) -> torch.Tensor:
        """(b, c, h, p, n): each chunk's contribution to the state at its last token, from its own tokens."""
        b, nc, Q, g, r, p = self.x.shape
        w = self.decay_to_end().reshape(b, nc, g, r, Q).permute(0, 1, 4, 2, 3)[..., None]  # (b,c,Q,g,r,1)
        states = torch.einsum("bcsgrp,bcsgn->bcgrpn", self.xdt * w, self.B)
        return states.reshape(b, nc, g * r, p, -1)

    def pass_states(self, states: torch.Tensor, initial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scan over chunks: states (b, c, h, p, n), initial (b, h, p, n) -> (incoming (b, c, h, p, n), final)
        where incoming[:, c] is the state entering chunk c."""
        decay = torch.exp(self.chunk_log_decay())  # (b, c, h)
        incoming = []
        s = initial
        for c in range(self.nc):
            incoming.append(s)
            s = s * decay[:, c, :, None, None] + states[:, c]
        return torch.stack(incoming, dim=1), s


def _initial(initial_state, b, h, p, n, ref: torch.Tensor, ct) -> torch.Tensor:
    if initial_state is None:
        return ref.new_zeros(b, h, p, n, dtype=ct)
    return initial_state.to(ct)


def ssd_chunked(
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
    """Chunked SSD; same arguments and results as `transmamba.ops.ssd.ssd` (see the module docstring).

    Returns y (b, l, h, p) in x's dtype [, final_state (b, h, p, n) in fp32 (fp64 for fp64 inputs)].
    """
    dims = check_ssd_args(
        "ssd_chunked", x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
        initial_state=initial_state, seq_idx=seq_idx, chunk_size=chunk_size,
    )
    b, l, h, p, n = dims.batch, dims.seqlen, dims.nheads, dims.headdim, dims.dstate
    ct = compute_dtype(x)
    init = _initial(initial_state, b, h, p, n, x, ct)
    if l == 0:
        y = x.new_zeros(b, 0, h, p)
        return (y, init) if return_final_state else y
    ch = _Chunks(x, effective_dt(dt, dt_bias, dt_softplus, ct), A, B, seq_idx, chunk_size, ct)
    Q, nc, g, r = ch.Q, ch.nc, ch.g, ch.r
    Cc = _pad_seq(C.to(ct), nc * Q, 0.0).reshape(b, nc, Q, g, n)

    # Intra-chunk: seg(t, s) = a_{s+1} + ... + a_t as a cumsum of masked copies (exact sums, no differences).
    idx = torch.arange(Q, device=x.device)
    strictly_below = idx[:, None] > idx[None, :]  # [r, s]: r > s
    seg = ch.a[..., :, None].masked_fill(~strictly_below, 0.0).cumsum(-2)  # (b, c, h, t, s)
    keep = idx[:, None] >= idx[None, :]  # [t, s]: causal within the chunk
    if ch.seq is not None:
        keep = keep & (ch.seq[:, :, None, :, None] == ch.seq[:, :, None, None, :])  # (b, c, 1, t, s)
    # in place is safe: cumsum saves no output for backward
    decay = torch.exp(seg.masked_fill_(~keep, float("-inf")))  # (b, c, h, t, s)
    CB = torch.einsum("bctgn,bcsgn->bcgts", Cc, ch.B)  # (b, c, g, t, s): no per-head copies of B, C
    M = CB[:, :, :, None] * decay.reshape(b, nc, g, r, Q, Q)
    y = torch.einsum("bcgrts,bcsgrp->bctgrp", M, ch.xdt)

    # Inter-chunk: chunk states, state passing, and each chunk's incoming state read through C.
    incoming, final = ch.pass_states(ch.chunk_states(), init)
    from_start = ch.a.cumsum(-1)  # (b, c, h, t): a_{c0} + ... + a_t
    if ch.seq is not None:
        other = ch.seq != ch.prev_doc[:, :, None]  # (b, c, t)
        from_start = from_start.masked_fill(other[:, :, None, :], float("-inf"))
    w = torch.exp(from_start).reshape(b, nc, g, r, Q).permute(0, 1, 4, 2, 3)[..., None]  # (b, c, t, g, r, 1)
    y = y + torch.einsum("bctgn,bcgrpn->bctgrp", Cc, incoming.reshape(b, nc, g, r, p, n)) * w

    y = y.reshape(b, nc * Q, h, p)[:, :l]
    y = skip_and_gate(y, x.to(ct), D, z).to(x.dtype)
    return (y, final) if return_final_state else y


def ssd_final_state_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    *,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """The Memory Converter: SSD's state after the last token of x, without computing any output (no C).

        S = exp(a_0 + ... + a_{l-1}) S_init + sum_s exp(a_{s+1} + ... + a_{l-1}) dt_s x_s B_sᵀ

    computed as chunk states plus state passing (O(l·h·p·n), no (Q, Q) matrices). With `seq_idx` it is the
    state of each row's last document (initial_state counts only if that is also the first document).
    x (b, l, h, p), dt (b, l, h), A (h,), B (b, l, g, n) -> (b, h, p, n) in fp32 (fp64 for fp64 inputs).
    """
    dims = check_ssd_args(
        "ssd_final_state", x, dt, A, B, None, dt_bias=dt_bias,
        initial_state=initial_state, seq_idx=seq_idx, chunk_size=chunk_size,
    )
    b, l, h, p, n = dims.batch, dims.seqlen, dims.nheads, dims.headdim, dims.dstate
    ct = compute_dtype(x)
    init = _initial(initial_state, b, h, p, n, x, ct)
    if l == 0:
        return init
    ch = _Chunks(x, effective_dt(dt, dt_bias, dt_softplus, ct), A, B, seq_idx, chunk_size, ct)
    return ch.pass_states(ch.chunk_states(), init)[1]
