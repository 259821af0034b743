"""Mixture of SwiGLU experts with top-k routing (Jamba: 16 experts, top-2).

For every token x (flattened over the leading dims):

    p = softmax(router(x))                     (n_experts,)  router: Linear(d_model, n_experts, bias=False)
    top-k experts E_1..E_k by p; weights w_j = p_{E_j} / Σ_j p_{E_j}   (renormalised over the chosen k;
                                               with renormalize=False w_j = p_{E_j}, Jamba's router)
    MoE(x) = Σ_j w_j · expert_{E_j}(x)          experts: SwiGLU `MLP`s

Compute is sparse: a loop over experts gathers the tokens routed to each (index_select), runs that expert on
them only, and scatters the weighted outputs back (index_add_).

Auxiliary losses of the last forward (scalars, with the graph, for the trainer to add):

    lb_loss = n_experts · Σ_i f_i · P_i      (Switch Transformer load balancing; 1 at perfect balance)
        f_i = (number of top-k assignments to expert i) / (tokens · k)     (Σ_i f_i = 1; no gradient)
        P_i = mean over tokens of p_i                                      (carries the router gradient)
    z_loss  = mean over tokens of logsumexp(router logits)²               (ST-MoE router z-loss)
    aux_loss = lb_loss + router_z_loss_coef · z_loss                       (what `.aux_loss` holds)

The model scales `.aux_loss` by its own coefficient.
"""

from __future__ import annotations

import torch
from torch import nn

from transmamba.layers.mlp import MLP


class MoE(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int = 16,
        top_k: int = 2,
        router_z_loss_coef: float = 0.0,
        bias: bool = False,
        renormalize: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if n_experts <= 0 or not 0 < top_k <= n_experts:
            raise ValueError(f"MoE: need 0 < top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_ff = d_model, d_ff
        self.n_experts, self.top_k = n_experts, top_k
        self.router_z_loss_coef = router_z_loss_coef
        self.renormalize = bool(renormalize)
        self.router = nn.Linear(d_model, n_experts, bias=False, **fk)
        self.experts = nn.ModuleList(MLP(d_model, d_ff, bias=bias, **fk) for _ in range(n_experts))
        self.aux_loss: torch.Tensor | None = None
        self.lb_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, d_model) -> logits (N, E) fp32, probs (N, E), top-k weights (N, k), top-k indices (N, k)."""
        logits = self.router(x).float()
        probs = logits.softmax(-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            top_w = top_w / top_w.sum(-1, keepdim=True)
        return logits, probs, top_w, top_i

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., d_model) -> (..., d_model); sets .aux_loss, .lb_loss, .z_loss."""
        if hidden.shape[-1] != self.d_model:
            raise ValueError(f"MoE: hidden must have shape (..., {self.d_model}), got {tuple(hidden.shape)}")
        x = hidden.reshape(-1, self.d_model)  # (N, D)
        N = x.shape[0]
        logits, probs, top_w, top_i = self.route(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(top_i == e, as_tuple=True)  # the tokens routed to e
            if token.numel() == 0:
                continue
            y = expert(x.index_select(0, token)) * top_w[token, slot].unsqueeze(-1).to(x.dtype)
            out = out.index_add(0, token, y)
        # auxiliary losses
        counts = torch.zeros(self.n_experts, device=x.device, dtype=torch.float32)
        counts.index_add_(0, top_i.reshape(-1), torch.ones(top_i.numel(), device=x.device))
        f = counts / max(N * self.top_k, 1)
        P = probs.mean(0) if N else probs.sum(0)
        self.lb_loss = self.n_experts * (f * P).sum()
        self.z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean() if N else logits.sum()
        self.aux_loss = self.lb_loss + self.router_z_loss_coef * self.z_loss
        return out.reshape(hidden.shape)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, n_experts={self.n_experts}, top_k={self.top_k}, "
                f"renormalize={self.renormalize}")
