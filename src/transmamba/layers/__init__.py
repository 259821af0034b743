"""transmamba.layers: the residual sub-layers of hybrid models (see docs/architecture.md).

Token mixers (forward(hidden, *, seq_idx, state), step, init_state): Attention, Mamba1, Mamba2, TransMamba.
Channel mixers: MLP (SwiGLU), MoE (top-k SwiGLU experts), SigmoidMoE (NemotronH's router). Block is the
pre-norm residual around either.
"""

from transmamba.layers.attention import Attention
from transmamba.layers.block import Block
from transmamba.layers.mamba1 import Mamba1
from transmamba.layers.mamba2 import Mamba2
from transmamba.layers.mlp import MLP
from transmamba.layers.moe import MoE
from transmamba.layers.norm import RMSNorm, RMSNormGated
from transmamba.layers.sigmoid_moe import SigmoidMoE
from transmamba.layers.state import KVState, LayerState, Mamba1State
from transmamba.layers.transmamba import TransMamba

__all__ = [
    "Attention",
    "Block",
    "KVState",
    "LayerState",
    "MLP",
    "Mamba1",
    "Mamba1State",
    "Mamba2",
    "MoE",
    "RMSNorm",
    "RMSNormGated",
    "SigmoidMoE",
    "TransMamba",
]
