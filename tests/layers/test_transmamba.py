"""TransMamba layer: the Memory Converter invariant, the attention path, packing, the decode state machine."""

from __future__ import annotations

import pytest
import torch
from _ssm_reference import assert_rel_close, attention_reference, perturb

from transmamba.layers.mamba2 import Mamba2
from transmamba.layers.ssm_state import TransMambaState
from transmamba.layers.transmamba import TransMamba, position_in_document

SMALL = dict(d_model=16, d_state=8, headdim=8, chunk_size=8)
T = 21  # spans three chunks of 8


def pair(ngroups=1, transpoint=0, **kw):
    """A perturbed Mamba2 and a TransMamba holding the same weights (loaded across by state dict)."""
    m = perturb(Mamba2(**SMALL, ngroups=ngroups, **kw))
    tm = TransMamba(**SMALL, ngroups=ngroups, transpoint=transpoint, **kw)
    tm.load_state_dict(m.state_dict())
    return m, tm


@pytest.mark.parametrize("ngroups", [1, 2])
def test_memory_converter_is_exact(ngroups):
    m, tm = pair(ngroups)
    hidden = torch.randn(2, T, 16)
    ref_ssm = m(hidden)
    ref_att = attention_reference(tm, hidden)
    for P in [0, 1, 5, 8, 16, T - 1]:
        tm.transpoint = P
        out = tm(hidden)
        assert_rel_close(out[:, P:], ref_ssm[:, P:], what=f"P={P} positions >= P vs Mamba2")
        if P:
            assert_rel_close(out[:, :P], ref_att[:, :P], what=f"P={P} positions < P vs attention")
            # and the two paths really differ before P (the test is not vacuous)
            assert (out[:, :P] - ref_ssm[:, :P]).abs().max() > 1e-3


def test_p0_is_mamba2_and_large_p_is_attention():
    m, tm = pair(ngroups=2)
    hidden = torch.randn(2, T, 16)
    assert torch.equal(tm(hidden), m(hidden))
    for P in [T, T + 7]:
        tm.set_transpoint(P)
        assert_rel_close(tm(hidden), attention_reference(tm, hidden), what=f"P={P} vs attention")


def test_attention_path_without_d_skip():
    m, tm = pair(ngroups=2, transpoint=9)
    tm.attn_d_skip = False
    hidden = torch.randn(1, 13, 16)
    out = tm(hidden)
    assert_rel_close(out[:, :9], attention_reference(tm, hidden, d_skip=False)[:, :9], what="no D skip")
    assert (out[:, :9] - attention_reference(tm, hidden, d_skip=True)[:, :9]).abs().max() > 1e-3
    assert_rel_close(out[:, 9:], m(hidden)[:, 9:], what="no D skip, SSM part")


def test_position_in_document():
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 2], [3, 3, 3, 3, 3, 3]])
    assert position_in_document(seq_idx).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("P", [0, 3, 6, 40])
def test_packed_equals_documents_alone(P):
    _, tm = pair(ngroups=2, transpoint=P)
    rows = [[5, 11, 4], [13, 7]]
    docs = [[torch.randn(1, n, 16) for n in lens] for lens in rows]
    hidden = torch.cat([torch.cat(d, 1) for d in docs])
    seq_idx = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(lens)]) for lens in rows])
    packed = tm(hidden, seq_idx=seq_idx)
    alone = torch.cat([torch.cat([tm(d) for d in ds], 1) for ds in docs])
    assert_rel_close(packed, alone, what=f"packed P={P}")


def _decode(tm, seqs, prompts, steps):
    """Prefill each sequence's prompt alone, stack the states, then step all rows together."""
    states = [tm.init_state(1, max_len=32) for _ in seqs]
    with torch.no_grad():
        pre = [tm(s[:, :k], state=st) for s, k, st in zip(seqs, prompts, states)]
        state = TransMambaState.stack(states)
        outs, sizes = [], []
        for i in range(steps):
            tok = torch.cat([s[:, k + i] for s, k in zip(seqs, prompts)])
            outs.append(tm.step(tok, state))
            sizes.append(state.nbytes())
    return pre, torch.stack(outs, 1), sizes, state


@pytest.mark.parametrize("ngroups", [1, 2])
def test_decode_rows_convert_at_different_steps(ngroups):
    P, steps = 6, 9
    _, tm = pair(ngroups=ngroups, transpoint=P)
    seqs = [torch.randn(1, T, 16) for _ in range(3)]
    full = [tm(s) for s in seqs]
    prompts = [2, 4, 9]  # the third row crossed P during its prefill; the others convert mid-decode
    pre, outs, sizes, state = _decode(tm, seqs, prompts, steps)
    for row, k in enumerate(prompts):
        assert_rel_close(pre[row], full[row][:, :k], what=f"prefill row {row}")
        assert_rel_close(outs[row], full[row][0, k : k + steps], what=f"decode row {row}")
    # row 0 reaches position P at step 4: from then on every row is converted and the cache is gone
    assert sizes[3] == sizes[0]
    assert sizes[4] < sizes[3]
    assert len(set(sizes[4:])) == 1
    assert state.kv_B is None and bool(state.converted.all())
    assert state.seqlen_offset.tolist() == [k + steps for k in prompts]


def test_prefill_in_pieces_crossing_p_from_an_offset():
    P = 7
    _, tm = pair(ngroups=2, transpoint=P)
    hidden = torch.randn(2, T, 16)
    full = tm(hidden)
    state = tm.init_state(2, max_len=3)  # buffers start small and grow up to P
    with torch.no_grad():
        pieces = [tm(hidden[:, a:b], state=state) for a, b in [(0, 3), (3, 10), (10, 12)]]
        assert state.kv_B is None  # both rows converted inside the second piece
        pieces += [tm.step(hidden[:, t], state)[:, None] for t in range(12, T)]
    assert_rel_close(torch.cat(pieces, 1), full, what="pieces + steps")


def test_prefill_exactly_to_p_then_step_converts():
    P = 5
    m, tm = pair(transpoint=P)
    hidden = torch.randn(1, 9, 16)
    full = tm(hidden)
    state = tm.init_state(1, max_len=9)
    with torch.no_grad():
        tm(hidden[:, :P], state=state)
        before = state.nbytes()
        assert not bool(state.converted.any())
        outs = [tm.step(hidden[:, t], state) for t in range(P, 9)]
    assert state.nbytes() < before
    assert_rel_close(torch.stack(outs, 1), full[:, P:], what="convert on step")
    assert_rel_close(torch.stack(outs, 1), m(hidden)[:, P:], what="vs Mamba2")


def test_p0_state_is_a_mamba2_state():
    m, tm = pair(transpoint=0)
    state = tm.init_state(2, max_len=16)
    assert state.kv_B is None and bool(state.converted.all())
    assert state.nbytes() == m.init_state(2, max_len=16).nbytes() + state.converted.numel()


def test_gradients_flow_through_both_paths():
    _, tm = pair(ngroups=2, transpoint=7)
    hidden = torch.randn(2, T, 16, requires_grad=True)
    out = tm(hidden)
    (out[:, :7].square().sum() + out[:, 7:].square().sum()).backward()
    for name, p in [("hidden", hidden), *tm.named_parameters()]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # z (first d_inner rows of in_proj) only feeds the SSM path; B/C rows feed both
    tm.zero_grad()
    tm(hidden)[:, :7].sum().backward()
    assert tm.in_proj.weight.grad[: tm.d_inner].abs().sum() == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="transpoint"):
        TransMamba(**SMALL, transpoint=-1)
    _, tm = pair(transpoint=4)
    with pytest.raises(ValueError, match="transpoint"):
        tm.transpoint = -2
    with pytest.raises(ValueError, match="transpoint"):
        tm.set_transpoint(1.5)
    with pytest.raises(ValueError, match="headdim"):
        TransMamba(10, d_state=8, headdim=8, transpoint=3)
    with pytest.raises(ValueError, match="ngroups"):
        TransMamba(16, d_state=8, headdim=8, ngroups=3, transpoint=3)
    state = tm.init_state(1, max_len=8)
    tm.set_transpoint(5)
    with pytest.raises(ValueError, match="transpoint"):
        tm.step(torch.randn(1, 16), state)
    with pytest.raises(ValueError, match="seq_idx"):
        seq_idx = torch.zeros(1, 3, dtype=torch.long)
        tm(torch.randn(1, 3, 16), seq_idx=seq_idx, state=tm.init_state(1, max_len=3))


@pytest.mark.parametrize("mode", ["attn", "ssm", "mixed"])
def test_step_in_a_fixed_mode_equals_eager_step(mode):
    """`step(mode=...)` (static: the caller converted the rows past P) gives what the eager `step` (which
    converts and picks the mode itself) gives, bit for bit, with every option of a converted Transformer
    on."""
    _, tm = pair(ngroups=2, transpoint=5, conv_activation=None)
    tm.attn_rope, tm.attn_norm, tm.attn_d_skip = True, False, False
    lengths = {"attn": [1, 3], "ssm": [6, 7], "mixed": [2, 6]}[mode]
    hidden = torch.randn(2, 8, 16)
    states = []
    with torch.no_grad():
        for _ in range(2):
            rows = []
            for r, n in enumerate(lengths):  # each row prefilled to its own length
                rows.append(tm.init_state(1, max_len=16))
                tm(hidden[r:r + 1, :n], state=rows[-1])
            states.append(TransMambaState.stack(rows))
        ref_state, state = states
        assert tm.step_mode(state.seqlen_offset.tolist()) == mode
        due = [r for r, n in enumerate(lengths) if n >= 5 and not bool(state.converted[r])]
        if due:
            tm.convert_rows(state, torch.tensor(due))
        x = torch.randn(2, 16)
        assert torch.equal(tm.step(x, state, mode=mode), tm.step(x, ref_state))


def test_step_mode_errors():
    _, tm = pair(transpoint=2)
    state = tm.init_state(1, max_len=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        tm.step(torch.randn(1, 16), state, mode="fast")
    with torch.no_grad():
        tm(torch.randn(1, 3, 16), state=state)  # past P: converted, KV cache freed
    assert state.kv_B is None
    with pytest.raises(ValueError, match="needs the KV cache"):
        tm.step(torch.randn(1, 16), state, mode="attn")
