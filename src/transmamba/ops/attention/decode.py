"""One-token attention over a padded KV cache with per-row lengths (the static decode step's attention).

    out[b, i] = Σ_{s < lengths[b]} softmax_s(scale · q[b, i] · k[b, s, i // G]) v[b, s, i // G]
    (G = hq / hkv query heads per key/value head)

q (b, hq, dk); k_cache (b, L, hkv, dk); v_cache (b, L, hkv, dv) (dv may differ from dk); lengths (b,) with
1 <= lengths[b] <= L. Positions >= lengths[b] are never attended (their contents do not matter as long as
they are finite: the torch version multiplies them by a zero weight), so the
cache can be preallocated to its final length and `lengths` kept on the device: nothing here depends on
values on the host, and the call can be captured in a CUDA graph.

Dispatch ("auto"): CUDA tensors go to the Triton split-K kernel (`ops/attention/triton_decode.py`, imported
lazily) unless TRANSMAMBA_DISABLE_TRITON is set; otherwise the torch version below (masked softmax in fp32,
or fp64 for fp64 inputs).
"""

from __future__ import annotations

import math

import torch

from transmamba.ops import backend
from transmamba.ops.checks import check_divides, check_shape

__all__ = ["decode_attention", "decode_attention_torch"]

_IMPLS = ("auto", "torch", "triton")


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor):
    op = "decode_attention"
    if q.dim() != 3:
        raise ValueError(f"{op}: q must have shape (batch, q_heads, head_dim), got {tuple(q.shape)}")
    b, hq, dk = q.shape
    if k_cache.dim() != 4:
        raise ValueError(f"{op}: k_cache must have shape ({b}, max_len, kv_heads, {dk}), "
                         f"got {tuple(k_cache.shape)}")
    check_shape(op, "k_cache", k_cache, (b, None, None, dk))
    L, hkv = k_cache.shape[1], k_cache.shape[2]
    if v_cache.dim() != 4:
        raise ValueError(f"{op}: v_cache must have shape ({b}, {L}, {hkv}, dv), got {tuple(v_cache.shape)}")
    check_shape(op, "v_cache", v_cache, (b, L, hkv, None))
    check_divides(op, "kv_heads", hkv, "q_heads", hq)
    check_shape(op, "lengths", lengths, (b,))
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{op}: lengths must be an integer tensor, got {lengths.dtype}")


def decode_attention_torch(q, k_cache, v_cache, lengths, scale: float) -> torch.Tensor:
    """The reference: explicit masked softmax in fp32 (fp64 for fp64 inputs). Returns (b, hq, dv)."""
    b, hq, dk = q.shape
    L, hkv, dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    ct = torch.promote_types(q.dtype, torch.float32)
    qg = q.reshape(b, hkv, hq // hkv, dk).to(ct)
    s = torch.einsum("bjgd,bljd->bjgl", qg, k_cache.to(ct)) * scale  # (b, hkv, G, L)
    valid = torch.arange(L, device=q.device)[None, :] < lengths[:, None]  # (b, L)
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = torch.einsum("bjgl,bljd->bjgd", s.softmax(-1), v_cache.to(ct))  # (b, hkv, G, dv)
    return out.reshape(b, hq, dv).to(q.dtype)


def _use_triton(q: torch.Tensor) -> bool:
    return q.dtype != torch.float64 and backend.use_triton(q)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """See the module docstring. scale defaults to 1/sqrt(dk). impl: "auto", "torch" or "triton".
    lengths are not range-checked (that would need a device-to-host sync)."""
    if impl not in _IMPLS:
        raise ValueError(f"decode_attention: impl must be one of {_IMPLS}, got {impl!r}")
    _check(q, k_cache, v_cache, lengths)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if impl == "triton" or (impl == "auto" and _use_triton(q)):
        from transmamba.ops.attention.triton_decode import decode_attention_triton

        return decode_attention_triton(q, k_cache, v_cache, lengths, scale)
    return decode_attention_torch(q, k_cache, v_cache, lengths, scale)
