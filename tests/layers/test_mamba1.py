"""Mamba-1 layer: names/init like mamba_ssm, prefill + steps == full, packed == separate, stack, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from transmamba.layers import Block, Mamba1, Mamba1State

D = 8


def _close(a, b, tol=1e-5):
    err = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
    assert err <= tol, err


def test_parameter_names_shapes_and_init():
    m = Mamba1(D, d_state=4, d_conv=3, expand=2)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (32, 8),
        "conv1d.weight": (16, 1, 3),
        "conv1d.bias": (16,),
        "x_proj.weight": (1 + 8, 16),
        "dt_proj.weight": (16, 1),
        "dt_proj.bias": (16,),
        "A_log": (16, 4),
        "D": (16,),
        "out_proj.weight": (8, 16),
    }
    assert m.dt_rank == math.ceil(D / 16)
    jamba = Mamba1(D, d_state=4, inner_layernorms=True).state_dict()
    assert {k: tuple(v.shape) for k, v in jamba.items() if "layernorm" in k} == {
        "dt_layernorm.weight": (1,), "b_layernorm.weight": (4,), "c_layernorm.weight": (4,)
    }
    assert torch.allclose(m.A_log.exp(), torch.arange(1.0, 5.0).expand(16, 4))
    assert torch.all(m.D == 1)
    dt = F.softplus(m.dt_proj.bias)
    assert torch.all(dt >= 1e-4) and torch.all(dt <= 0.1 + 1e-6)


@pytest.mark.parametrize("impl,inner_norms", [("chunked", False), ("ref", False), ("chunked", True)])
def test_prefill_then_steps_equals_full(impl, inner_norms):
    m = Mamba1(D, d_state=4, scan_impl=impl, inner_layernorms=inner_norms)
    x = torch.randn(2, 13, D)
    full = m(x)
    state = m.init_state(2, max_len=13)
    outs = [m(x[:, :2], state=state), m(x[:, 2:7], state=state)]  # t=2 < d_conv-1: short conv window
    outs += [m.step(x[:, t], state).unsqueeze(1) for t in range(7, 13)]
    _close(torch.cat(outs, 1), full)
    assert state.seqlen_offset.tolist() == [13, 13]


def test_packed_equals_separate_forward_and_backward():
    m = Mamba1(D, d_state=4)
    lens = [5, 1, 8]
    docs = [torch.randn(1, n, D, requires_grad=True) for n in lens]
    seq_idx = torch.cat([torch.full((1, n), i) for i, n in enumerate(lens)], 1)
    out = m(torch.cat(docs, 1), seq_idx=seq_idx)
    sep = torch.cat([m(d) for d in docs], 1)
    _close(out, sep)
    g = torch.randn_like(out)
    gp = torch.autograd.grad(out, docs, g)
    gs = torch.autograd.grad(sep, docs, g)
    for a, b in zip(gp, gs):
        _close(a, b)


def test_stack_states_then_step():
    m = Mamba1(D, d_state=4)
    prompts = [torch.randn(1, 6, D), torch.randn(1, 3, D)]
    nxt = torch.randn(2, 2, D)
    states = []
    for p in prompts:
        s = m.init_state(1, max_len=8)
        m(p, state=s)
        states.append(s)
    st = Mamba1State.stack(states)
    assert st.seqlen_offset.tolist() == [6, 3]
    outs = torch.stack([m.step(nxt[:, t], st) for t in range(2)], 1)
    for r, p in enumerate(prompts):
        _close(outs[r : r + 1], m(torch.cat([p, nxt[r : r + 1]], 1))[:, -2:])


def test_gradients_reach_every_parameter():
    m = Mamba1(D, d_state=4)
    m(torch.randn(2, 9, D)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_block_with_mamba1_step():
    blk = Block(Mamba1(D, d_state=4), D)
    x = torch.randn(1, 5, D)
    st = blk.init_state(1, max_len=5)
    first = blk(x[:, :3], state=st)  # prefill, then two steps
    steps = [blk.step(x[:, t], st)[:, None] for t in (3, 4)]
    out = torch.cat([first, *steps], 1)
    _close(out, blk(x))
    assert st.nbytes() == 1 * 8 + 16 * 3 * 4 + 16 * 4 * 4


def test_errors():
    with pytest.raises(ValueError, match="d_state"):
        Mamba1(D, d_state=0)
    m = Mamba1(D, d_state=4)
    with pytest.raises(ValueError, match=r"Mamba1: hidden must have shape \(\*, \*, 8\), got \(2, 3, 5\)"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="Mamba1State"):
        m.step(torch.randn(1, D), object())
    with pytest.raises(ValueError, match="batch"):
        m.step(torch.randn(2, D), m.init_state(1, max_len=4))
