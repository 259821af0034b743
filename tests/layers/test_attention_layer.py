"""Attention layer: prefill + steps == full forward, packed == separate, KVState.stack, errors."""

import pytest
import torch

from transmamba.layers import Attention, Block, KVState
from transmamba.ops.attention import attention_reference

D, H, HKV = 16, 4, 2


def _close(a, b, tol=1e-5):
    err = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
    assert err <= tol, err


@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("n_kv", [H, HKV, 1])
def test_prefill_then_steps_equals_full(rope, n_kv):
    layer = Attention(D, H, n_kv, rope=rope)
    x = torch.randn(2, 11, D)
    full = layer(x)
    state = layer.init_state(2, max_len=16)
    outs = [layer(x[:, :6], state=state)]
    outs += [layer.step(x[:, t], state).unsqueeze(1) for t in range(6, 11)]
    _close(torch.cat(outs, 1), full)
    assert state.seqlen_offset.tolist() == [11, 11]


def test_chunked_prefill_equals_full():
    layer = Attention(D, H, HKV)
    x = torch.randn(2, 10, D)
    state = layer.init_state(2, max_len=10)
    out = torch.cat([layer(x[:, a:b], state=state) for a, b in ((0, 3), (3, 7), (7, 10))], 1)
    _close(out, layer(x))


def test_matches_explicit_reference_without_rope():
    layer = Attention(D, H, HKV, rope=False)
    x = torch.randn(2, 7, D)
    q = layer.q_proj(x).view(2, 7, H, 4)
    k = layer.k_proj(x).view(2, 7, HKV, 4)
    v = layer.v_proj(x).view(2, 7, HKV, 4)
    ref = layer.o_proj(attention_reference(q, k, v).reshape(2, 7, D))
    _close(layer(x), ref)


def test_packed_equals_separate():
    layer = Attention(D, H, HKV, rope=True)
    lens = [4, 7, 3]
    docs = [torch.randn(1, n, D) for n in lens]
    packed = torch.cat(docs, 1)
    seq_idx = torch.cat([torch.full((1, n), i) for i, n in enumerate(lens)], 1)
    out = layer(packed, seq_idx=seq_idx)
    _close(out, torch.cat([layer(d) for d in docs], 1))


def test_stack_states_of_different_lengths_then_step():
    layer = Attention(D, H, HKV)
    prompts = [torch.randn(1, 5, D), torch.randn(1, 2, D)]
    nxt = torch.randn(2, 3, D)
    states = []
    for p in prompts:
        s = layer.init_state(1, max_len=5 + 3)
        layer(p, state=s)
        states.append(s)
    states[1] = KVState.stack([states[1]])  # stack of one is fine
    s2 = layer.init_state(1, max_len=2 + 3)  # a shorter buffer: stack pads it
    layer(prompts[1], state=s2)
    merged = KVState.stack([states[0], s2])
    assert merged.k.shape[1] == 8 and merged.seqlen_offset.tolist() == [5, 2]
    outs = torch.stack([layer.step(nxt[:, t], merged) for t in range(3)], 1)
    for r, p in enumerate(prompts):
        full = layer(torch.cat([p, nxt[r : r + 1]], 1))[:, -3:]
        _close(outs[r : r + 1], full)


def test_block_delegates_state():
    blk = Block(Attention(D, H, HKV), D)
    x = torch.randn(2, 6, D)
    st = blk.init_state(2, max_len=6)
    first = blk(x[:, :4], state=st)  # prefill, then two steps
    steps = [blk.step(x[:, t], st)[:, None] for t in (4, 5)]
    out = torch.cat([first, *steps], 1)
    _close(out, blk(x))


def test_errors():
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        Attention(D, 4, 3)
    layer = Attention(D, H, HKV)
    with pytest.raises(ValueError, match=r"Attention: hidden must have shape \(\*, \*, 16\)"):
        layer(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="seq_idx"):
        layer(torch.randn(2, 3, D), seq_idx=torch.zeros(2, 4, dtype=torch.long))
    st = layer.init_state(1, max_len=2)
    with pytest.raises(ValueError, match="max_len=2"):
        layer(torch.randn(1, 3, D), state=st)
    with pytest.raises(ValueError, match="batch"):
        layer.step(torch.randn(2, D), st)
