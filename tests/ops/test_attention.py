"""Causal attention through SDPA against the explicit softmax(QKᵀ)V reference: GQA, RoPE, seq_idx, decode."""

import pytest
import torch

from transmamba.ops.attention import (
    apply_rope,
    attention_reference,
    cached_attention,
    causal_attention,
    decode_attention,
    position_in_document,
    rope_decode,
    rope_frequencies,
)


def _qkv(b=2, t=9, hq=4, hkv=2, dh=8):
    return torch.randn(b, t, hq, dh), torch.randn(b, t, hkv, dh), torch.randn(b, t, hkv, dh)


def _doc_mask(seq_idx):
    t = seq_idx.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seq_idx.device).tril()
    return causal & (seq_idx[:, :, None] == seq_idx[:, None, :])


@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_matches_reference_gqa(hkv):
    q, k, v = _qkv(hkv=hkv)
    torch.testing.assert_close(causal_attention(q, k, v), attention_reference(q, k, v))
    torch.testing.assert_close(causal_attention(q, k, v, scale=0.3), attention_reference(q, k, v, scale=0.3))


def test_seq_idx_document_mask_and_packed_equals_separate():
    q, k, v = _qkv(b=2, t=10)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 2], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3]])
    out = causal_attention(q, k, v, seq_idx=seq_idx)
    torch.testing.assert_close(out, attention_reference(q, k, v, mask=_doc_mask(seq_idx)))
    # with RoPE restarting per document, row 0 equals its three documents run alone
    out = causal_attention(q, k, v, seq_idx=seq_idx, rope=True)
    for a, b in ((0, 3), (3, 5), (5, 10)):
        alone = causal_attention(q[:1, a:b], k[:1, a:b], v[:1, a:b], rope=True)
        torch.testing.assert_close(out[:1, a:b], alone)


def test_rope_matches_complex_rotation_and_positions():
    x = torch.randn(2, 5, 3, 8)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 3, 0, 1, 9]])
    out = apply_rope(x, pos, base=100.0)
    freqs = 100.0 ** (-torch.arange(4) * 2 / 8)
    xc = torch.complex(x[..., :4], x[..., 4:])  # pairs (i, i + dh/2)
    rot = xc * torch.polar(torch.ones(2, 5, 1, 4), pos[:, :, None, None] * freqs)
    torch.testing.assert_close(out, torch.cat([rot.real, rot.imag], -1))
    torch.testing.assert_close(apply_rope(x, torch.arange(5)), apply_rope(x, torch.arange(5).expand(2, 5)))
    assert position_in_document(torch.tensor([[0, 0, 1, 1, 1, 4]])).tolist() == [[0, 1, 0, 1, 2, 0]]


def test_rope_attention_matches_reference_and_is_relative():
    q, k, v = _qkv()
    pos = torch.arange(9)
    ref = attention_reference(apply_rope(q, pos), apply_rope(k, pos), v)
    torch.testing.assert_close(causal_attention(q, k, v, rope=True), ref)
    torch.testing.assert_close(causal_attention(q, k, v, rope=pos + 5), ref, atol=1e-5, rtol=1e-4)


def test_decode_and_cached_prefill_against_full():
    q, k, v = _qkv(b=2, t=9)
    full = causal_attention(q, k, v)
    L = 12
    kc, vc = torch.randn(2, L, 2, 8), torch.randn(2, L, 2, 8)  # garbage beyond the valid entries
    kc[:, :9], vc[:, :9] = k, v
    for t in range(9):
        lengths = torch.tensor([t + 1, t + 1])
        torch.testing.assert_close(decode_attention(q[:, t], kc, vc, lengths), full[:, t])
    # rows with different lengths: row 1 holds only 4 tokens
    out = decode_attention(q[:, 3], kc, vc, torch.tensor([9, 4]))
    torch.testing.assert_close(out[1], full[1, 3])
    # prefill 4 new tokens after 5 cached ones
    torch.testing.assert_close(cached_attention(q[:, 5:], kc, vc, torch.tensor([5, 5])), full[:, 5:])


def test_rope_decode_is_apply_rope_for_one_token():
    x = torch.randn(3, 4, 8)
    pos = torch.tensor([0, 5, 17])
    ref = apply_rope(x[:, None], pos[:, None], 500.0)[:, 0]  # (b, 1, h, dh) at positions (b, 1)
    torch.testing.assert_close(rope_decode(x, pos, rope_frequencies(8, 500.0)), ref, atol=0, rtol=0)


def test_cached_attention_seq_idx():
    q, k, v = _qkv(b=1, t=8)
    seq_idx_full = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    full = causal_attention(q, k, v, seq_idx=seq_idx_full)
    out = cached_attention(q[:, 3:], k, v, torch.tensor([3]), seq_idx=seq_idx_full[:, 3:])
    torch.testing.assert_close(out, full[:, 3:])


def test_errors():
    q, k, v = _qkv(hq=4, hkv=3)
    msg = "causal_attention: kv_heads=3 must be a positive divisor of q_heads=4"
    with pytest.raises(ValueError, match=msg):
        causal_attention(q, k, v)
    q, k, v = _qkv()
    msg = r"causal_attention: v must have shape \(2, 9, 2, 8\), got \(2, 9, 2, 4\)"
    with pytest.raises(ValueError, match=msg):
        causal_attention(q, k, v[..., :4])
    with pytest.raises(ValueError, match=r"seq_idx must have shape \(2, 9\)"):
        causal_attention(q, k, v, seq_idx=torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"apply_rope: positions must have shape \(9\)"):
        apply_rope(q, torch.arange(8))
    with pytest.raises(ValueError, match="head_dim must be even"):
        apply_rope(torch.randn(1, 2, 1, 3), torch.arange(2))
    with pytest.raises(ValueError, match=r"decode_attention: lengths must have shape \(2\)"):
        decode_attention(q[:, 0], k, v, torch.tensor([1]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    q, k, v = (x.cuda().to(dtype) for x in _qkv(b=2, t=64, hq=8, hkv=2, dh=64))
    seq_idx = torch.cat([torch.zeros(2, 20), torch.ones(2, 44)], 1).long().cuda()
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-4)
    ref = attention_reference(q.float(), k.float(), v.float(), mask=_doc_mask(seq_idx))
    torch.testing.assert_close(causal_attention(q, k, v, seq_idx=seq_idx).float(), ref, **tol)
    ref = attention_reference(q.float(), k.float(), v.float())
    torch.testing.assert_close(causal_attention(q, k, v).float(), ref, **tol)
