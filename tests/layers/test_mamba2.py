"""Mamba2 layer: against a per-token recurrence built from its parameters, packing, decode, init, errors."""

from __future__ import annotations

import math

import pytest
import torch
from _ssm_reference import assert_rel_close, mamba2_recurrent, perturb

from transmamba.layers.mamba2 import Mamba2
from transmamba.layers.ssm_state import Mamba2State

SMALL = dict(d_model=16, d_state=8, headdim=8, chunk_size=8)


def make(**kw):
    return perturb(Mamba2(**{**SMALL, **kw}))


@pytest.mark.parametrize("ngroups", [1, 2])
def test_matches_per_token_recurrence(ngroups):
    layer = make(ngroups=ngroups)
    hidden = torch.randn(2, 21, 16)
    assert_rel_close(layer(hidden), mamba2_recurrent(layer, hidden), what="Mamba2 vs recurrence")


def test_parameter_names_shapes_and_init():
    layer = Mamba2(32, d_state=16, headdim=16, ngroups=2, dt_min=0.002, dt_max=0.05, A_init_range=(2, 8))
    d_inner, h, gn = 64, 4, 32
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (2 * d_inner + 2 * gn + h, 32),
        "conv1d.weight": (d_inner + 2 * gn, 1, 4),
        "conv1d.bias": (d_inner + 2 * gn,),
        "dt_bias": (h,),
        "A_log": (h,),
        "D": (h,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (32, d_inner),
    }
    dt = torch.nn.functional.softplus(layer.dt_bias.detach())
    assert bool((dt >= 0.002 - 1e-6).all() and (dt <= 0.05 + 1e-6).all())
    A = layer.A_log.detach().exp()
    assert bool((A >= 2).all() and (A <= 8).all())
    assert torch.equal(layer.D.detach(), torch.ones(h))
    assert torch.equal(layer.norm.weight.detach(), torch.ones(d_inner))
    assert layer.norm.group_size == d_inner // 2
    assert all(getattr(p, "_no_weight_decay", False) for p in (layer.dt_bias, layer.A_log, layer.D))
    # the dt floor applies
    floored = Mamba2(8, d_state=4, headdim=4, dt_min=1e-6, dt_max=1e-6, dt_init_floor=1e-3)
    torch.testing.assert_close(torch.nn.functional.softplus(floored.dt_bias.detach()), torch.full((4,), 1e-3))
    assert math.isclose(layer.nheads * layer.headdim, d_inner)


def test_packed_equals_documents_alone():
    layer = make(ngroups=2)
    lens = [5, 11, 4]
    docs = [torch.randn(1, n, 16) for n in lens]
    seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])[None]
    packed = layer(torch.cat(docs, dim=1), seq_idx=seq_idx)
    alone = torch.cat([layer(d) for d in docs], dim=1)
    assert_rel_close(packed, alone, what="packed vs alone")


def test_prefill_then_step_equals_forward_with_mixed_offsets():
    layer = make()
    T = 14
    seqs = [torch.randn(1, T, 16) for _ in range(2)]
    full = [layer(s) for s in seqs]
    prompts = [3, 7]
    states = []
    with torch.no_grad():
        for s, k in zip(seqs, prompts):
            st = layer.init_state(1, max_len=T)
            assert_rel_close(layer(s[:, :k], state=st), full[len(states)][:, :k], what="prefill")
            states.append(st)
        state = Mamba2State.stack(states)
        assert state.seqlen_offset.tolist() == prompts
        nbytes = state.nbytes()
        for i in range(T - max(prompts)):
            tok = torch.cat([s[:, k + i] for s, k in zip(seqs, prompts)])
            out = layer.step(tok, state)
            for row, k in enumerate(prompts):
                assert_rel_close(out[row], full[row][0, k + i], what=f"step {i} row {row}")
            assert state.nbytes() == nbytes
    assert state.seqlen_offset.tolist() == [k + T - max(prompts) for k in prompts]


def test_prefill_in_pieces():
    layer = make(ngroups=2)
    hidden = torch.randn(2, 17, 16)
    full = layer(hidden)
    state = layer.init_state(2, max_len=17)
    with torch.no_grad():
        pieces = [layer(hidden[:, a:b], state=state) for a, b in [(0, 2), (2, 11), (11, 17)]]
    assert_rel_close(torch.cat(pieces, 1), full, what="pieces")


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(d_model=10, headdim=8), "headdim"),
        (dict(d_model=16, headdim=8, ngroups=3), "ngroups"),
        (dict(d_model=0), "d_model"),
        (dict(d_model=16, headdim=8, A_init_range=(0, 4)), "A_init_range"),
    ],
)
def test_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        Mamba2(**{"d_state": 8, **kw})


def test_bad_call_arguments():
    layer = make()
    with pytest.raises(ValueError, match="hidden"):
        layer(torch.randn(2, 5, 15))
    with pytest.raises(ValueError, match="batch"):
        layer(torch.randn(2, 5, 16), state=layer.init_state(3, max_len=8))
