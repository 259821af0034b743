"""Multi-head causal self-attention with grouped-query heads and optional rotary embeddings.

    q = q_proj(x) (b, t, n_heads, head_dim);  k = k_proj(x), v = v_proj(x) (b, t, n_kv_heads, head_dim)
    q, k = rope(q, pos), rope(k, pos)                   (rope=True; positions restart at document starts)
    out = o_proj( causal_attention(q, k, v) )            softmax(q kᵀ / sqrt(head_dim)) v, masked causally
                                                         and, with seq_idx, within documents

Parameters (Llama naming): q_proj (d_model -> n_heads·head_dim), k_proj, v_proj (d_model ->
n_kv_heads·head_dim), o_proj (n_heads·head_dim -> d_model); bias=False by default (`bias` sets q/k/v and,
unless `out_bias` says otherwise, o_proj); torch's default Linear init.

Partial rotary (`rope_dim` < head_dim, HF's partial_rotary_factor): only the first rope_dim channels of each
head are rotated, as a rope_dim-channel RoPE (pairs (i, i + rope_dim/2), frequencies base^(-2i/rope_dim));
the other channels pass through unrotated.

Decoding keeps a `KVState`: preallocated k/v buffers (b, max_len, n_kv_heads, head_dim), keys stored after
RoPE, each row at its own `seqlen_offset`. A prefill with `state` writes the new keys at each row's offset and
attends to everything the row holds; `step` appends one token per row, statically: an indexed store at each
row's offset and attention over the whole buffer with the lengths on the device (`ops.decode_attention`), so
no host sync and no shape that changes between steps (a step can be captured in a CUDA graph).
"""

from __future__ import annotations

import torch
from torch import nn

from transmamba.layers.state import KVState
from transmamba.ops.attention import (
    apply_rope,
    cached_attention,
    causal_attention,
    decode_attention,
    position_in_document,
    rope_decode,
    rope_frequencies,
)
from transmamba.ops.checks import check_divides, check_shape
from transmamba.ops.skinny_linear import skinny_linear


class Attention(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        rope: bool = True,
        rope_base: float = 10000.0,
        bias: bool = False,
        out_bias: bool | None = None,
        rope_dim: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model <= 0 or n_heads <= 0:
            raise ValueError(f"Attention: d_model and n_heads must be positive, got {d_model}, {n_heads}")
        check_divides("Attention", "n_kv_heads", n_kv_heads, "n_heads", n_heads)
        if head_dim is None:
            check_divides("Attention", "n_heads", n_heads, "d_model", d_model)
            head_dim = d_model // n_heads
        if rope and head_dim % 2:
            raise ValueError(f"Attention: head_dim={head_dim} must be even for rotary embeddings")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.rope, self.rope_base = rope, rope_base
        rope_dim = head_dim if rope_dim is None else int(rope_dim)
        if rope and not (0 < rope_dim <= head_dim and rope_dim % 2 == 0):
            raise ValueError(f"Attention: rope_dim={rope_dim} must be even and in (0, head_dim={head_dim}]")
        self.rope_dim = rope_dim
        out_bias = bias if out_bias is None else out_bias
        fk = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias, **fk)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias, **fk)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias, **fk)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=out_bias, **fk)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE on x (b, t, heads, head_dim) at positions (t,) or (b, t): the first rope_dim channels."""
        if self.rope_dim == self.head_dim:
            return apply_rope(x, positions, self.rope_base)
        rot = apply_rope(x[..., : self.rope_dim].contiguous(), positions, self.rope_base)
        return torch.cat([rot, x[..., self.rope_dim :]], dim=-1)

    def _qkv(self, hidden: torch.Tensor):
        lead = hidden.shape[:-1]
        q = self.q_proj(hidden).view(*lead, self.n_heads, self.head_dim)
        k = self.k_proj(hidden).view(*lead, self.n_kv_heads, self.head_dim)
        v = self.v_proj(hidden).view(*lead, self.n_kv_heads, self.head_dim)
        return q, k, v

    def _check_state(self, state, batch: int) -> None:
        if not isinstance(state, KVState):
            raise ValueError(
                f"Attention: state must be a KVState (from init_state), got {type(state).__name__}"
            )
        if state.batch_size != batch:
            raise ValueError(f"Attention: state has batch {state.batch_size}, hidden has batch {batch}")
        check_shape("Attention", "state.k", state.k, (batch, None, self.n_kv_heads, self.head_dim))

    def forward(
        self, hidden: torch.Tensor, *, seq_idx: torch.Tensor | None = None, state: KVState | None = None
    ) -> torch.Tensor:
        """hidden (b, t, d_model) -> (b, t, d_model). With `state`: a prefill continuing it (in place)."""
        check_shape("Attention", "hidden", hidden, (None, None, self.d_model))
        b, t, _ = hidden.shape
        if seq_idx is not None:
            check_shape("Attention", "seq_idx", seq_idx, (b, t))
        q, k, v = self._qkv(hidden)
        if state is None and self.rope and self.rope_dim != self.head_dim:
            pos = (position_in_document(seq_idx) if seq_idx is not None
                   else torch.arange(t, device=hidden.device))
            q, k = self.rotate(q, pos), self.rotate(k, pos)
            out = causal_attention(q, k, v, seq_idx=seq_idx)
        elif state is None:
            out = causal_attention(q, k, v, seq_idx=seq_idx, rope=self.rope, rope_base=self.rope_base)
        else:
            self._check_state(state, b)
            offset = state.seqlen_offset
            fresh = seq_idx is None and t > 1 and not bool(offset.any())  # (the write below syncs anyway)
            if self.rope:
                pos = offset[:, None] + torch.arange(t, device=hidden.device)  # (b, t)
                if seq_idx is not None:  # later documents restart at 0; the first continues the cache
                    first_doc = seq_idx == seq_idx[:, :1]
                    pos = torch.where(first_doc, pos, position_in_document(seq_idx))
                q, k = self.rotate(q, pos), self.rotate(k, pos)
            state.write(k, v)
            if fresh:  # every row starts at 0: causal attention over the new keys, no mask, so flash runs
                out = causal_attention(q, k, v)
            else:
                end = int((offset + t).max())
                out = cached_attention(q, state.k[:, :end], state.v[:, :end], offset, seq_idx=seq_idx)
            state.seqlen_offset += t
        return self.o_proj(out.reshape(b, t, self.n_heads * self.head_dim))

    def step_constants(self) -> dict[str, torch.Tensor]:
        """What every decode step would recompute from the weights: {"inv_freq": RoPE's inverse frequencies
        base^(-2i/rope_dim), (rope_dim/2,) fp32} ({} without RoPE). Pass them to `step` as keywords."""
        if not self.rope:
            return {}
        return {"inv_freq": rope_frequencies(self.rope_dim, self.rope_base, self.q_proj.weight.device)}

    def step(self, hidden: torch.Tensor, state: KVState, *, inv_freq: torch.Tensor | None = None,
             reduce: bool = True) -> torch.Tensor:
        """One token per row: hidden (b, d_model) -> (b, d_model); appends to `state` in place.

            q, k, v = q_proj(x), k_proj(x), v_proj(x)    (b, heads, head_dim), rotated at p = seqlen_offset
            K[r, p_r], V[r, p_r] = k_r, v_r              indexed store, one slot per row
            out_r = o_proj( Σ_{s ≤ p_r} softmax_s(q_r · K[r, s] / √head_dim) V[r, s] )

        Static: attention runs over the whole preallocated buffer with the lengths p + 1 on the device, so
        there is no host sync and every call launches the same kernels on the same buffers (CUDA-graph
        capturable). The caller makes sure every row has room (p < max_len; `CausalLM.step` checks in eager
        use, `StaticDecoder` on the host). inv_freq: from `step_constants` (computed here when None).
        Linears go through `ops.skinny_linear`; reduce=False lets o_proj return its fp32 split-K partial
        sums (S, b, d_model) on CUDA (no bias only), for `layers.norm.add_norm` to sum."""
        check_shape("Attention", "hidden", hidden, (None, self.d_model))
        b = hidden.shape[0]
        self._check_state(state, b)
        q = skinny_linear(hidden, self.q_proj).view(b, self.n_heads, self.head_dim)
        k = skinny_linear(hidden, self.k_proj).view(b, self.n_kv_heads, self.head_dim)
        v = skinny_linear(hidden, self.v_proj).view(b, self.n_kv_heads, self.head_dim)
        pos = state.seqlen_offset  # (b,)
        if self.rope:
            rd = self.rope_dim
            if inv_freq is None:
                inv_freq = rope_frequencies(rd, self.rope_base, hidden.device)
            if rd == self.head_dim:
                q, k = rope_decode(q, pos, inv_freq), rope_decode(k, pos, inv_freq)
            else:  # partial rotary: the first rope_dim channels of each head
                q = torch.cat([rope_decode(q[..., :rd].contiguous(), pos, inv_freq), q[..., rd:]], dim=-1)
                k = torch.cat([rope_decode(k[..., :rd].contiguous(), pos, inv_freq), k[..., rd:]], dim=-1)
        rows = torch.arange(b, device=hidden.device)
        state.k[rows, pos] = k.to(state.k.dtype)
        state.v[rows, pos] = v.to(state.v.dtype)
        out = decode_attention(q, state.k, state.v, pos + 1)  # (b, h, dh)
        state.seqlen_offset += 1
        return skinny_linear(out.reshape(b, self.n_heads * self.head_dim), self.o_proj,
                             reduce=reduce or self.o_proj.bias is not None)

    def init_state(self, batch: int, *, max_len: int, device=None, dtype=None) -> KVState:
        """Empty KV buffers for `batch` rows of up to `max_len` tokens."""
        if max_len is None or max_len <= 0:
            raise ValueError(f"Attention.init_state: max_len must be a positive int, got {max_len!r}")
        device = self.q_proj.weight.device if device is None else device
        dtype = self.q_proj.weight.dtype if dtype is None else dtype
        return KVState.empty(batch, max_len, self.n_kv_heads, self.head_dim, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, rope={self.rope}"
            + (f", rope_dim={self.rope_dim}" if self.rope and self.rope_dim != self.head_dim else "")
        )
