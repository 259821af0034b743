"""SwiGLU feed-forward (Llama naming):

    MLP(x) = down_proj( silu(gate_proj(x)) * up_proj(x) )

gate_proj, up_proj: d_model -> d_ff; down_proj: d_ff -> d_model; no biases by default. Works on any leading
shape (..., d_model), so a Block can call it for training (b, t, D) and decoding (b, D) alike; `step` is the
decode form (b, D) with the linears through `ops.skinny_linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.ops.skinny_linear import skinny_linear


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        if d_model <= 0 or d_ff <= 0:
            raise ValueError(f"MLP: d_model and d_ff must be positive, got d_model={d_model}, d_ff={d_ff}")
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_ff = d_model, d_ff
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias, **fk)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias, **fk)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias, **fk)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., d_model) -> (..., d_model)."""
        if hidden.shape[-1] != self.d_model:
            raise ValueError(f"MLP: hidden must have shape (..., {self.d_model}), got {tuple(hidden.shape)}")
        return self.down_proj(F.silu(self.gate_proj(hidden)) * self.up_proj(hidden))

    def step(self, hidden: torch.Tensor, *, reduce: bool = True) -> torch.Tensor:
        """The forward for one decode token per row, hidden (b, d_model) -> (b, d_model), its linears through
        `ops.skinny_linear`; reduce=False lets down_proj return its fp32 split-K partial sums (S, b, d_model)
        on CUDA (no bias only), for `layers.norm.add_norm` to sum."""
        gated = F.silu(skinny_linear(hidden, self.gate_proj)) * skinny_linear(hidden, self.up_proj)
        return skinny_linear(gated, self.down_proj, reduce=reduce or self.down_proj.bias is not None)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}"
