# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Triton split-K decode attention ("flash decoding") over a padded KV cache with per-row lengths.

One query token per row and query head; key/value head j serves query heads j*G .. j*G+G-1 (G = hq / hkv):

    out[b, i] = Σ_{s < len[b]} softmax_s(scale · q[b, i] · k[b, s, i // G]) v[b, s, i // G]

Pass 1, grid (b * hkv, nsplit): program (b, j, c) reads keys / values [c·chunk, min((c+1)·chunk, len[b]))
once for all G query heads of head j and writes its partial softmax state (running max m, sum l, the
unnormalised output acc) in fp32. Pass 2, grid (b * hq,): out = Σ_c exp(m_c - M) acc_c / Σ_c exp(m_c - M) l_c,
M = max_c m_c. Splits past a row's length write m = -inf, l = 0 and contribute nothing.

`len` is a device tensor and the grid depends only on static sizes (batch, heads, the cache's max length),
so a call can be captured in a CUDA graph. Only the first len[b] positions of a row are read: a cache
preallocated to a large max length costs nothing beyond the rows' real lengths.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# launch settings (keys per block, warps, pipeline stages, programs pass 1 aims at), by how many (row, kv
# head) pairs there are: few pairs are split into many short ranges, many pairs read long ranges. Best of a
# sweep on an H100 at 16 heads x 96, L = 32K (docs/performance.md, Decode): b = 16 at 94% of the copy
# bandwidth, b = 1 at 73%.
CONFIG: dict[str, int] = dict(BN=64, warps=4, stages=2, programs=528)  # b * hkv < BIG_PAIRS
CONFIG_BIG: dict[str, int] = dict(BN=128, warps=8, stages=3, programs=528)  # b * hkv >= BIG_PAIRS
BIG_PAIRS = 128


@triton.jit
def _split_kernel(Q, K, V, LEN, MO, LO, AO,
                  s_qb, s_qh, s_kb, s_kl, s_kh, s_vb, s_vl, s_vh,
                  hkv, nsplit, chunk, scale,
                  G: tl.constexpr, BG: tl.constexpr, DK: tl.constexpr, BDK: tl.constexpr, DV: tl.constexpr,
                  BDV: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # b * hkv + j; cache offsets need 64 bits
    c = tl.program_id(1)
    b = pid // hkv
    j = pid % hkv
    length = tl.load(LEN + b).to(tl.int32)
    start = c * chunk
    end = tl.minimum(start + chunk, length)
    offs_g = tl.arange(0, BG)
    mg = offs_g < G
    offs_k = tl.arange(0, BDK)
    offs_v = tl.arange(0, BDV)
    mk = offs_k < DK
    mv = offs_v < DV
    q = tl.load(Q + b * s_qb + (j * G + offs_g)[:, None] * s_qh + offs_k[None, :], mask=mg[:, None] & mk[None, :], other=0.0)
    q = (q.to(tl.float32) * (scale * 1.4426950408889634)).to(K.dtype.element_ty)  # log2 domain
    m = tl.full((BG,), float("-inf"), dtype=tl.float32)
    lsum = tl.zeros((BG,), dtype=tl.float32)
    acc = tl.zeros((BG, BDV), dtype=tl.float32)
    kbase = K + b * s_kb + j * s_kh
    vbase = V + b * s_vb + j * s_vh
    for n0 in range(start, end, BN):
        offs_n = n0 + tl.arange(0, BN)
        mn = offs_n < end
        kt = tl.load(kbase + offs_n[None, :].to(tl.int64) * s_kl + offs_k[:, None], mask=mk[:, None] & mn[None, :], other=0.0)  # (BDK, BN)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = tl.where(mn[None, :], s, float("-inf"))  # (BG, BN)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        lsum = lsum * alpha + tl.sum(p, axis=1)
        v = tl.load(vbase + offs_n[:, None].to(tl.int64) * s_vl + offs_v[None, :], mask=mn[:, None] & mv[None, :], other=0.0)  # (BN, BDV)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    row = (pid * nsplit + c) * G + offs_g  # workspace (b, hkv, nsplit, G[, DV])
    tl.store(MO + row, m, mask=mg)
    tl.store(LO + row, lsum, mask=mg)
    tl.store(AO + row[:, None] * DV + offs_v[None, :], acc, mask=mg[:, None] & mv[None, :])


@triton.jit
def _combine_kernel(MO, LO, AO, OUT, s_ob, s_oh, hq, nsplit, G: tl.constexpr, DV: tl.constexpr,
                    BS: tl.constexpr, BDV: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # b * hq + i
    b = pid // hq
    i = pid % hq
    j = i // G
    gi = i % G
    offs_s = tl.arange(0, BS)
    ms = offs_s < nsplit
    offs_v = tl.arange(0, BDV)
    mv = offs_v < DV
    row = ((b * (hq // G) + j) * nsplit + offs_s) * G + gi  # (BS,)
    m = tl.load(MO + row, mask=ms, other=float("-inf"))
    lsum = tl.load(LO + row, mask=ms, other=0.0)
    big = tl.max(m, axis=0)
    w = tl.where(ms & (m > float("-inf")), tl.exp2(m - big), 0.0)
    acc = tl.load(AO + row[:, None] * DV + offs_v[None, :], mask=ms[:, None] & mv[None, :], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(lsum * w, axis=0)
    tl.store(OUT + b * s_ob + i * s_oh + offs_v, out, mask=mv)


def _p2(v: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(v)))


def launch_config(batch: int, kv_heads: int) -> dict[str, int]:
    return CONFIG_BIG if batch * kv_heads >= BIG_PAIRS else CONFIG


def num_splits(batch: int, kv_heads: int, max_len: int, block: int | None = None) -> int:
    """Splits per row: enough programs to fill the GPU (the config's 'programs'), at least one block each."""
    cfg = launch_config(batch, kv_heads)
    block = cfg["BN"] if block is None else block
    want = max(1, -(-cfg["programs"] // max(1, batch * kv_heads)))
    return max(1, min(want, -(-max_len // block)))


def decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            lengths: torch.Tensor, scale: float, nsplit: int | None = None) -> torch.Tensor:
    """q (b, hq, dk); k_cache (b, L, hkv, dk); v_cache (b, L, hkv, dv) (last dims contiguous, any other
    strides); lengths (b,) int, 1 <= lengths <= L (not checked: that would need a sync). -> (b, hq, dv) in
    q's dtype."""
    b, hq, dk = q.shape
    L, hkv = k_cache.shape[1], k_cache.shape[2]
    dv = v_cache.shape[3]
    G = hq // hkv
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("decode_attention_triton: k_cache and v_cache need a contiguous last dimension")
    cfg = launch_config(b, hkv)
    BN = cfg["BN"]
    ns = num_splits(b, hkv, L, BN) if nsplit is None else int(nsplit)
    per = -(-L // ns)
    chunk = -(-per // BN) * BN  # ceil(L / ns) rounded up to a multiple of BN
    ns = -(-L // chunk)
    dev = q.device
    mo = torch.empty(b, hkv, ns, G, device=dev, dtype=torch.float32)
    lo = torch.empty_like(mo)
    ao = torch.empty(b, hkv, ns, G, dv, device=dev, dtype=torch.float32)
    # IEEE fp32 dots for fp32 caches, and always on CPU tensors (Triton's interpreter has no tf32)
    ieee = q.dtype == torch.float32 and (not q.is_cuda or k_cache.dtype == torch.float32)
    _split_kernel[(b * hkv, ns)](
        q, k_cache, v_cache, lengths, mo, lo, ao,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        hkv, ns, chunk, float(scale),
        G=G, BG=_p2(G), DK=dk, BDK=_p2(dk), DV=dv, BDV=_p2(dv), BN=BN, IEEE=ieee,
        num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    out = torch.empty(b, hq, dv, device=dev, dtype=q.dtype)
    _combine_kernel[(b * hq,)](mo, lo, ao, out, out.stride(0), out.stride(1), hq, ns, G=G, DV=dv,
                               BS=_p2(ns, 2), BDV=_p2(dv, 16), num_warps=4)
    return out
