"""MLP (SwiGLU), MoE (top-k routing, load-balancing loss), norms and Block with channel mixers."""

import pytest
import torch
import torch.nn.functional as F

from transmamba.layers import MLP, Block, MoE, RMSNorm, RMSNormGated


def test_mlp_is_swiglu():
    m = MLP(6, 10)
    x = torch.randn(3, 4, 6)
    ref = m.down_proj.weight @ (F.silu(m.gate_proj.weight @ x[..., None]) * (m.up_proj.weight @ x[..., None]))
    torch.testing.assert_close(m(x), ref[..., 0])
    assert set(m.state_dict()) == {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}


def _dense_moe(moe, x):
    """Every expert on every token, combined with the renormalised top-k weights (the spec)."""
    p = moe.router(x).softmax(-1)
    w, i = p.topk(moe.top_k, -1)
    w = w / w.sum(-1, keepdim=True)
    outs = torch.stack([e(x) for e in moe.experts], -2)  # (N, E, D)
    gate = torch.zeros_like(p).scatter(-1, i, w)  # (N, E)
    return (gate.unsqueeze(-1) * outs).sum(-2)


def test_moe_routes_to_top_k_only():
    moe = MoE(6, 8, n_experts=5, top_k=2)
    x = torch.randn(2, 7, 6)
    torch.testing.assert_close(moe(x), _dense_moe(moe, x.reshape(-1, 6)).reshape(2, 7, 6))
    calls = []
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda mod, inp, out, e=e: calls.append((e, inp[0].shape[0])))
    moe(x)
    _, _, _, top_i = moe.route(x.reshape(-1, 6))
    expected = [(e, int((top_i == e).sum())) for e in range(5) if (top_i == e).any()]
    assert calls == expected  # each expert sees only its tokens; 14 tokens * 2 = 28 rows in total
    assert sum(n for _, n in calls) == 28


def test_moe_aux_loss_by_hand():
    moe = MoE(2, 3, n_experts=3, top_k=1)
    with torch.no_grad():
        moe.router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [3.0, 0.0]])
    moe(x)
    logits = x @ moe.router.weight.T
    p = logits.softmax(-1)
    f = torch.tensor([3 / 4, 1 / 4, 0.0])  # tokens 0, 2, 3 -> expert 0; token 1 -> expert 1
    expected = 3 * (f * p.mean(0)).sum()
    torch.testing.assert_close(moe.aux_loss, expected)
    torch.testing.assert_close(moe.lb_loss, expected)
    torch.testing.assert_close(moe.z_loss, torch.logsumexp(logits, -1).pow(2).mean())


def test_moe_z_loss_coef_and_router_gradient():
    moe = MoE(6, 8, n_experts=4, top_k=2, router_z_loss_coef=0.1)
    x = torch.randn(9, 6)
    y = moe(x)
    torch.testing.assert_close(moe.aux_loss, moe.lb_loss + 0.1 * moe.z_loss)
    (y.square().sum()).backward(retain_graph=True)
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    moe.router.weight.grad = None
    moe.lb_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0


def test_block_with_channel_mixer():
    moe = MoE(6, 8, n_experts=3, top_k=2)
    blk = Block(moe, 6)
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(blk(x), x + moe(blk.norm(x)))
    torch.testing.assert_close(blk.step(x[:, 0]), blk(x)[:, 0])
    assert blk.init_state(2, max_len=5) is None
    assert set(dict(blk.named_children())) == {"norm", "mixer"}


def test_norm_modules():
    x, z = torch.randn(3, 8), torch.randn(3, 8)
    n = RMSNorm(8, eps=1e-6)
    torch.testing.assert_close(n(x), x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt())
    g = RMSNormGated(8, eps=1e-6, group_size=4)
    xg = (x * F.silu(z)).view(3, 2, 4)
    torch.testing.assert_close(g(x, z), (xg / (xg.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()).view(3, 8))
    g2 = RMSNormGated(8, eps=1e-6, norm_before_gate=True)
    torch.testing.assert_close(g2(x, z), n(x) * F.silu(z))


def test_errors():
    with pytest.raises(ValueError, match="top_k=3"):
        MoE(4, 4, n_experts=2, top_k=3)
    with pytest.raises(ValueError, match=r"MoE: hidden must have shape \(\.\.\., 4\)"):
        MoE(4, 4, n_experts=2, top_k=1)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"MLP: hidden must have shape \(\.\.\., 4\)"):
        MLP(4, 4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="group_size=3"):
        RMSNormGated(8, group_size=3)
    with pytest.raises(ValueError, match=r"RMSNorm: x must have shape \(\.\.\., 8\)"):
        RMSNorm(8)(torch.randn(2, 4))
