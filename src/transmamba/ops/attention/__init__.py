"""Causal softmax attention through `torch.nn.functional.scaled_dot_product_attention`.

Layout: q (b, t, hq, dh); k, v (b, t, hkv, dh) with hkv dividing hq (grouped-query attention: query head i
reads key/value head i // (hq / hkv)).

    out_i = Σ_{j allowed(i)} softmax_j(scale · q_i · k_j) v_j,   scale = 1/sqrt(dh) by default

allowed(i) = {j ≤ i}; with `seq_idx` (b, t) also seq_idx[j] == seq_idx[i] (document masking for packed rows).

Rotary embeddings (`apply_rope`) rotate channel pairs (x[..., i], x[..., i + dh/2]) by angle
position · base^(-2i/dh) (the "rotate half" convention of GPT-NeoX / Llama).

Decoding (`decode_attention`, `ops/attention/decode.py`) reads a preallocated KV cache (b, L, hkv, dh) of
which row r holds `lengths[r]` valid entries; `rope_decode` rotates one token per row. `attention_reference`
is the explicit softmax(QKᵀ)V with the same masks, for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops import backend
from transmamba.ops.attention.decode import decode_attention
from transmamba.ops.checks import check_divides, check_shape

__all__ = [
    "decode_attention",
    "apply_rope",
    "position_in_document",
    "causal_attention",
    "cached_attention",
    "rope_decode",
    "rope_frequencies",
    "attention_reference",
    "last_dim_contiguous",
]

_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


# ----------------------------------------------------------------------------------------------------------
# rotary position embedding
# ----------------------------------------------------------------------------------------------------------


def position_in_document(seq_idx: torch.Tensor) -> torch.Tensor:
    """Each token's position from its document's start (RoPE positions, TransPoint tests): seq_idx (b, t)
    non-decreasing document ids -> (b, t) long."""
    b, t = seq_idx.shape
    idx = torch.arange(t, device=seq_idx.device).expand(b, t)
    start = torch.ones_like(seq_idx, dtype=torch.bool)
    start[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values  # index of the document start
    return idx - first


def _triton_rope(x: torch.Tensor):
    """`ops.attention.triton_rope.rope_triton` for CUDA tensors of more than one token (training, prefill;
    lazily imported), else None (`ops.backend.use_triton` decides)."""
    if x.dtype == torch.float64 or x.shape[1] < 2 or not backend.use_triton(x):
        return None
    from transmamba.ops.attention.triton_rope import rope_triton

    return rope_triton


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate x (b, t, h, dh) by its positions (b, t) or (t,); dh must be even. Computed in fp32. CUDA
    tensors of t > 1 tokens use the Triton kernel (`ops/attention/triton_rope.py`), same math."""
    if x.dim() != 4:
        raise ValueError(
            f"apply_rope: x must have shape (batch, seqlen, heads, head_dim), got {tuple(x.shape)}"
        )
    b, t, _, dh = x.shape
    if dh % 2:
        raise ValueError(f"apply_rope: head_dim must be even, got x of shape {tuple(x.shape)}")
    if positions.dim() == 1:
        check_shape("apply_rope", "positions", positions, (t,))
        positions = positions.unsqueeze(0)
    else:
        check_shape("apply_rope", "positions", positions, (b, t))
    half = dh // 2
    inv_freq = rope_frequencies(dh, base, x.device)  # (half,)
    fn = _triton_rope(x)
    if fn is not None:  # one fused kernel (fwd and bwd) instead of ~10 fp32 elementwise passes
        return fn(x, positions, inv_freq)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # (b|1, t, half)
    cos = angles.cos().unsqueeze(2)  # (b|1, t, 1, half)
    sin = angles.sin().unsqueeze(2)
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


def rope_frequencies(dim: int, base: float, device=None) -> torch.Tensor:
    """RoPE's inverse frequencies base^(-2i/dim), i = 0 .. dim/2 - 1: (dim/2,) fp32."""
    return base ** (-torch.arange(dim // 2, device=device, dtype=torch.float32) * 2.0 / dim)


def rope_decode(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """`apply_rope` for one token per row with the frequencies given (`rope_frequencies`): x (b, h, dh),
    positions (b,) long -> (b, h, dh). No host sync and no data-dependent shape (a decode step can be
    captured in a CUDA graph). CUDA: one Triton launch (`ops/attention/triton_rope.py`) instead of ~12
    elementwise passes."""
    if backend.use_triton_inplace(x):
        from transmamba.ops.attention.triton_rope import rope_triton

        return rope_triton(x.unsqueeze(1), positions[:, None], inv_freq)[:, 0]
    half = x.shape[-1] // 2
    angles = positions.to(torch.float32)[:, None] * inv_freq  # (b, half)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # (b, 1, half)
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def _resolve_rope(rope, b: int, t: int, seq_idx, device) -> torch.Tensor | None:
    """rope: None/False (none), True (positions 0..t-1, restarting per document), or a positions tensor."""
    if rope is None or rope is False:
        return None
    if rope is True:
        if seq_idx is not None:
            return position_in_document(seq_idx)
        return torch.arange(t, device=device)
    if isinstance(rope, torch.Tensor):
        return rope
    raise ValueError(
        f"rope must be None, a bool or a positions tensor (t,) / (b, t), got {type(rope).__name__}"
    )


# ----------------------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------------------


def _check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: int | None = None):
    if q.dim() != 4:
        raise ValueError(f"{op}: q must have shape (batch, seqlen, q_heads, head_dim), got {tuple(q.shape)}")
    b, t, hq, dh = q.shape
    if k.dim() != 4:
        raise ValueError(f"{op}: k must have shape ({b}, seqlen, kv_heads, {dh}), got {tuple(k.shape)}")
    check_shape(op, "k", k, (b, t if kv_len is None else None, None, dh))
    check_shape(op, "v", v, tuple(k.shape))
    check_divides(op, "kv_heads", k.shape[2], "q_heads", hq)
    return b, t, hq, dh


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last dimension has stride 1, else a contiguous copy. SDPA's fused kernels (flash,
    memory-efficient, cuDNN) refuse any other q / k / v and PyTorch falls back to the math kernel, which
    materialises the (t x s) score matrix; the other dimensions may have any strides."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _sdpa(q, k, v, mask, is_causal, scale):
    """q (b, t, hq, dh), k/v (b, s, hkv, dh) -> (b, t, hq, dh) through SDPA."""
    hq, hkv = q.shape[2], k.shape[2]
    qh, kh, vh = (last_dim_contiguous(x.transpose(1, 2)) for x in (q, k, v))  # (b, h, t, dh)
    kwargs = {}
    if hq != hkv:
        if _SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        else:
            kh = kh.repeat_interleave(hq // hkv, dim=1)
            vh = vh.repeat_interleave(hq // hkv, dim=1)
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, is_causal=is_causal, scale=scale, **kwargs
    )
    return out.transpose(1, 2)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    seq_idx: torch.Tensor | None = None,
    rope=None,
    rope_base: float = 10000.0,
) -> torch.Tensor:
    """Causal (optionally document-masked) attention.

    Args:
        q: (b, t, hq, dh); k, v: (b, t, hkv, dh), hkv divides hq.
        scale: logit scale, default 1/sqrt(dh).
        seq_idx: (b, t) document ids (non-decreasing): a token attends only within its document.
        rope: None/False — no rotary; True — positions 0..t-1 (restarting at each document when seq_idx is
            given); or a positions tensor (t,) or (b, t). Applied to q and k with `rope_base`.
    Returns:
        (b, t, hq, dh).
    """
    b, t, _, _ = _check_qkv("causal_attention", q, k, v)
    if seq_idx is not None:
        check_shape("causal_attention", "seq_idx", seq_idx, (b, t))
    positions = _resolve_rope(rope, b, t, seq_idx, q.device)
    if positions is not None:
        q, k = apply_rope(q, positions, rope_base), apply_rope(k, positions, rope_base)
    if seq_idx is None:
        return _sdpa(q, k, v, None, True, scale)
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    mask = causal & (seq_idx[:, :, None] == seq_idx[:, None, :])  # (b, t, t)
    return _sdpa(q, k, v, mask.unsqueeze(1), False, scale)


def cached_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    offsets: torch.Tensor,
    *,
    scale: float | None = None,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Queries continuing rows of a KV cache (chunked prefill / decode).

    Row r's query i sits at position offsets[r] + i and sees cache entries j ≤ offsets[r] + i (the cache must
    already hold this call's keys at offsets[r] .. offsets[r] + t - 1). With `seq_idx` (b, t) for the new
    tokens, new keys follow the document mask and the older cache entries count as the first new token's
    document.

    Args: q (b, t, hq, dh); k_cache, v_cache (b, L, hkv, dh); offsets (b,) long. Returns (b, t, hq, dh).
    """
    b, t, _, _ = _check_qkv("cached_attention", q, k_cache, v_cache, kv_len=-1)
    check_shape("cached_attention", "offsets", offsets, (b,))
    L = k_cache.shape[1]
    qpos = offsets[:, None] + torch.arange(t, device=q.device)  # (b, t)
    kpos = torch.arange(L, device=q.device)  # (L,)
    mask = kpos[None, None, :] <= qpos[:, :, None]  # (b, t, L)
    if seq_idx is not None:
        check_shape("cached_attention", "seq_idx", seq_idx, (b, t))
        # document of each cache slot: older entries -> first new token's document; new ones -> seq_idx
        rel = (kpos[None, :] - offsets[:, None]).clamp(0, t - 1)  # (b, L)
        kdoc = torch.gather(seq_idx, 1, rel)
        mask = mask & (kdoc[:, None, :] == seq_idx[:, :, None])
    return _sdpa(q, k_cache, v_cache, mask.unsqueeze(1), False, scale)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Explicit softmax(scale · Q Kᵀ + mask) V. q (b, t, hq, dh); k, v (b, s, hkv, dh); mask (b, t, s) bool
    (True = attend) or None for the causal mask (s == t). Returns (b, t, hq, dh)."""
    b, t, hq, dh = q.shape
    s, hkv = k.shape[1], k.shape[2]
    rep = hq // hkv
    kk = k.repeat_interleave(rep, dim=2)  # (b, s, hq, dh)
    vv = v.repeat_interleave(rep, dim=2)
    scale = dh**-0.5 if scale is None else scale
    logits = torch.einsum("bthd,bshd->bhts", q, kk) * scale
    if mask is None:
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril().expand(b, t, s)
    logits = logits.masked_fill(~mask[:, None], float("-inf"))
    return torch.einsum("bhts,bshd->bthd", logits.softmax(-1), vv)
