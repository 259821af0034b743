"""Pre-norm residual block: x + sublayer(RMSNorm(x)).

A token mixer (anything with `step` and `init_state`: Attention, Mamba1, Mamba2, TransMamba) receives
`seq_idx` and `state`; a channel mixer (MLP, MoE) is called plainly on the normalised hidden states, in
training (b, t, D) and decoding (b, D) alike. Submodules are `norm` (RMSNorm weight) and `mixer`.

Decoding: `step(x)` = x + `mixer_step(norm(x))`, the mixer's own `step` (keywords such as a TransMamba
layer's `mode` pass through). `CausalLM.step` calls `mixer_step` itself, to fuse each residual add with
the next block's norm (`layers.norm.add_norm`).
"""

from __future__ import annotations

import torch
from torch import nn

from transmamba.layers.norm import RMSNorm


def is_token_mixer(module: nn.Module) -> bool:
    """True for sequence mixers (they decode with a state), False for MLP / MoE."""
    return callable(getattr(module, "step", None)) and callable(getattr(module, "init_state", None))


class Block(nn.Module):
    def __init__(self, sublayer: nn.Module, d_model: int, norm_eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.d_model = d_model
        self.norm = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        self.mixer = sublayer
        self.is_token_mixer = is_token_mixer(sublayer)

    def forward(
        self, hidden: torch.Tensor, *, seq_idx: torch.Tensor | None = None, state=None
    ) -> torch.Tensor:
        """hidden (b, t, D) -> (b, t, D)."""
        h = self.norm(hidden)
        if self.is_token_mixer:
            return hidden + self.mixer(h, seq_idx=seq_idx, state=state)
        return hidden + self.mixer(h)

    def mixer_step(self, normed: torch.Tensor, state=None, **kw) -> torch.Tensor:
        """The sub-layer's decode step on the normalised hidden states normed (b, D) -> (b, D): a token
        mixer's `step(normed, state, **kw)`, a channel mixer's `step(normed, **kw)` where it has one (MLP),
        else the module itself (MoE: routing has data-dependent shapes anyway)."""
        if self.is_token_mixer:
            return self.mixer.step(normed, state, **kw)
        step = getattr(self.mixer, "step", None)
        return step(normed, **kw) if callable(step) else self.mixer(normed)

    def step(self, hidden: torch.Tensor, state=None, **kw) -> torch.Tensor:
        """One decode token per row: hidden (b, D) -> hidden + mixer_step(norm(hidden)); the mixer's state is
        updated in place."""
        return hidden + self.mixer_step(self.norm(hidden), state, **kw)

    def init_state(self, batch: int, *, max_len: int, device=None, dtype=None):
        """The mixer's decode state, or None for MLP / MoE."""
        if not self.is_token_mixer:
            return None
        return self.mixer.init_state(batch, max_len=max_len, device=device, dtype=dtype)
