"""Mixture of experts with a sigmoid router, grouped top-k and a shared expert (NemotronH / DeepSeek-V3
style; `layers.MoE` is the softmax-router kind of Jamba / Switch).

For every token x (flattened over the leading dims), with E experts in G groups of E / G:

    s = sigmoid(gate(x))                              (E,) fp32 scores; gate: Linear(d_model, E, bias=False)
    c = s + e_score_correction_bias                   (E,) scores used only to *choose* experts
    group score = sum of the two largest c in the group; keep the topk_groups best groups, c = -inf elsewhere
    chosen = top-k of c;  w_j = s_{E_j}  (/ (Σ_j s_{E_j} + 1e-20) when renormalize)  · scale
    out = Σ_j w_j · expert_{E_j}(x)  +  shared_experts(x)      (shared only when shared_ff > 0)

`e_score_correction_bias` is a buffer: it balances the load by shifting the choice (the bias is learnt
outside the gradient in DeepSeek-V3's recipe), so there is no auxiliary loss (`aux_loss` stays None).
The experts and the shared expert come from `make_mlp(d_ff)` (the model passes its two-matrix MLP with
`mlp_act`). Parameter names follow HF transformers' NemotronH: gate.weight, gate.e_score_correction_bias,
experts.e.*, shared_experts.*.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class SigmoidMoE(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        make_mlp: Callable[[int], nn.Module],
        n_experts: int = 8,
        top_k: int = 2,
        n_groups: int = 1,
        topk_groups: int = 1,
        renormalize: bool = True,
        scale: float = 1.0,
        shared_ff: int = 0,
    ):
        super().__init__()
        if n_experts <= 0 or not 0 < top_k <= n_experts:
            raise ValueError(
                f"SigmoidMoE: need 0 < top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}"
            )
        if n_groups <= 0 or n_experts % n_groups or n_experts // n_groups < 2:
            raise ValueError(
                f"SigmoidMoE: n_groups={n_groups} must divide n_experts={n_experts} into groups of at least 2"
            )
        if not 0 < topk_groups <= n_groups or top_k > topk_groups * (n_experts // n_groups):
            raise ValueError(
                f"SigmoidMoE: topk_groups={topk_groups} must be in [1, n_groups={n_groups}] and keep "
                f"at least top_k={top_k} experts"
            )
        self.d_model, self.d_ff, self.n_experts, self.top_k = d_model, d_ff, n_experts, top_k
        self.n_groups, self.topk_groups = n_groups, topk_groups
        self.renormalize, self.scale = bool(renormalize), float(scale)
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.gate.register_buffer("e_score_correction_bias", torch.zeros(n_experts))
        self.experts = nn.ModuleList(make_mlp(d_ff) for _ in range(n_experts))
        self.shared_experts = make_mlp(shared_ff) if shared_ff > 0 else None
        self.aux_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, d_model) -> top-k weights (N, k) fp32, top-k indices (N, k)."""
        scores = torch.sigmoid(torch.nn.functional.linear(x.float(), self.gate.weight.float()))  # (N, E)
        choice = scores + self.gate.e_score_correction_bias.float()
        if self.topk_groups < self.n_groups:
            grouped = choice.view(-1, self.n_groups, self.n_experts // self.n_groups)  # (N, G, E/G)
            group_score = grouped.topk(2, dim=-1).values.sum(-1)  # (N, G)
            keep = torch.zeros_like(group_score).scatter_(
                1, group_score.topk(self.topk_groups, dim=-1).indices, 1.0
            )
            choice = choice.masked_fill(
                ~keep.bool().repeat_interleave(self.n_experts // self.n_groups, 1), float("-inf")
            )
        top_i = choice.topk(self.top_k, dim=-1).indices
        top_w = scores.gather(1, top_i)
        if self.renormalize:
            top_w = top_w / (top_w.sum(-1, keepdim=True) + 1e-20)
        return top_w * self.scale, top_i

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., d_model) -> (..., d_model)."""
        if hidden.shape[-1] != self.d_model:
            raise ValueError(
                f"SigmoidMoE: hidden must have shape (..., {self.d_model}), got {tuple(hidden.shape)}"
            )
        x = hidden.reshape(-1, self.d_model)  # (N, D)
        top_w, top_i = self.route(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(top_i == e, as_tuple=True)
            if token.numel() == 0:
                continue
            y = expert(x.index_select(0, token)) * top_w[token, slot].unsqueeze(-1).to(x.dtype)
            out = out.index_add(0, token, y)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.reshape(hidden.shape)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_ff={self.d_ff}, n_experts={self.n_experts}, top_k={self.top_k}, "
            f"groups={self.topk_groups}/{self.n_groups}, renormalize={self.renormalize}, scale={self.scale}"
        )
