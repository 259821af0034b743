"""SigmoidMoE (NemotronH's router) against a per-token reference written from its docstring."""

import pytest
import torch
from torch import nn

from transmamba.layers import SigmoidMoE


class _Relu2(nn.Module):
    def __init__(self, d, ff):
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(d, ff, bias=False), nn.Linear(ff, d, bias=False)

    def forward(self, x):
        return self.down_proj(torch.relu(self.up_proj(x)) ** 2)


def _reference(moe: SigmoidMoE, x: torch.Tensor) -> torch.Tensor:
    out = []
    per = moe.n_experts // moe.n_groups
    for tok in x:
        s = torch.sigmoid(moe.gate.weight @ tok)  # (E,)
        c = s + moe.gate.e_score_correction_bias
        groups = [sorted(c[g * per : (g + 1) * per].tolist())[-2:] for g in range(moe.n_groups)]
        best = sorted(range(moe.n_groups), key=lambda g: -sum(groups[g]))[: moe.topk_groups]
        allowed = [e for e in range(moe.n_experts) if e // per in best]
        chosen = sorted(allowed, key=lambda e: -float(c[e]))[: moe.top_k]
        w = torch.stack([s[e] for e in chosen])
        if moe.renormalize:
            w = w / w.sum()
        y = sum(wj * moe.scale * moe.experts[e](tok) for wj, e in zip(w, chosen))
        if moe.shared_experts is not None:
            y = y + moe.shared_experts(tok)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("renormalize, groups, shared", [(True, (4, 2), 12), (False, (1, 1), 0)])
def test_matches_reference(renormalize, groups, shared):
    torch.manual_seed(0)
    moe = SigmoidMoE(
        16,
        8,
        lambda ff: _Relu2(16, ff),
        n_experts=8,
        top_k=2,
        n_groups=groups[0],
        topk_groups=groups[1],
        renormalize=renormalize,
        scale=1.7,
        shared_ff=shared,
    )
    with torch.no_grad():
        moe.gate.e_score_correction_bias.copy_(torch.rand(8))
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        assert torch.allclose(moe(x).reshape(-1, 16), _reference(moe, x.reshape(-1, 16)), atol=1e-5)
    moe(x).sum().backward()  # differentiable through the router weights
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0


def test_bad_groups():
    with pytest.raises(ValueError, match="n_groups"):
        SigmoidMoE(16, 8, lambda ff: _Relu2(16, ff), n_experts=8, n_groups=3)
