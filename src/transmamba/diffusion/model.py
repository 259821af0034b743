"""Dimba (arXiv 2406.01159): a PixArt-α-style diffusion transformer whose attention blocks alternate with
bidirectional Mamba blocks, plus the attention-only (DiT / PixArt) and Mamba-only (DiS-style) baselines.

Input: a noisy image or latent x (b, C, H, W), the diffusion step t (b,), a condition. Tokens:

    h_0   = PatchEmbed(x) + pos2d                 Conv2d(C → D, kernel = stride = p), T = (H/p)·(W/p) tokens;
                                                   pos2d the fixed 2-D sin-cos embedding (half of D for rows,
                                                   half for columns)
    e_t   = MLP(sinusoid_256(t))                   (b, D)      timestep embedding
    s     = Linear(SiLU(e_t))                      (b, 6·D)    adaLN-single: ONE projection for all blocks
    c     = condition tokens                       (b, L, D)   class: a learned embedding per class (+ a null
                                                               row); text: MLP of a text encoder's features

DimbaBlock i (PixArt's block; its own learned table E_i (6, D) is added to the shared s):

    (β₁, γ₁, α₁, β₂, γ₂, α₂) = E_i + s
    h = h + α₁ ⊙ SelfAttn(LN(h) ⊙ (1 + γ₁) + β₁)          bidirectional softmax attention over the T tokens
    h = h + CrossAttn(h, c)                                 queries h, keys/values the condition tokens
    h = h + α₂ ⊙ MLP(LN(h) ⊙ (1 + γ₂) + β₂)               GELU(tanh) MLP, ratio 4

BiMamba blocks (K = `mamba_per_attention` of them after every M-th attention block, M =
`attention_per_mamba`: the ratio attention:Mamba = M:K, the paper's 1:1 by default; no timestep or condition
input, as in the paper):

    h = h + BiMamba(RMSNorm(h)),   BiMamba(u) = M_f(u) + flip(M_b(flip(u)))

with M_f, M_b two mixers with separate parameters (Mamba-1 by default; `mixer` picks Mamba-2 or TransMamba),
flip reversing the token axis. Final layer: LN, shift/scale from e_t + a learned (2, D) table, Linear(D→p²C'),
unpatchify. C' = 2·C with `learn_sigma` (ε and the variance interpolation v of IDDPM), else C.

Choices that differ from the official code (feizc/Dimba) and why:

- Mamba residual: the official loop feeds each attention block the bare Mamba output and carries the sum in a
  separate residual stream (mamba_ssm's fused add-norm convention); here every sub-layer is a plain pre-norm
  residual ``h + f(norm(h))``, which keeps one stream and makes each block an identity at init when its
  branch is zero.
- The two scan directions have separate in/out projections (the issue's definition; Vim's "v2" shares them),
  so Dimba-L/2 has 1.08 B parameters rather than the paper's ~0.9 B.
- Zero init (DiT's adaLN-Zero carried to adaLN-single): the shared projection, the gate rows α of every table,
  the cross-attention output and the final linear start at zero, so at init every DimbaBlock is the identity
  and the network outputs 0. Mamba out_proj is scaled by 1/√(number of Mamba blocks) as in the official code.
- ``adaln_condition`` (ours, off in the paper presets, on in the class-conditional ones): the condition
  tokens, pooled, are also added to e_t, so they modulate every block as DiT's class embedding does. With one
  class token, cross-attention can only add a per-image bias to all tokens; on CPU-sized runs that path alone
  left the samples unconditional (class accuracy at chance), the adaLN path fixes it.
- Mamba-only baseline (``arch="mamba"``): blocks ``h += α₁ BiMamba(mod(LN h)); h += α₂ MLP(mod(LN h))`` with
  condition pooled over its tokens and added to e_t before the shared adaLN projection (DiT's class
  conditioning; DiS instead prepends condition tokens — pooling keeps T unchanged for the scaling study).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHS",
    "MIXERS",
    "PRESETS",
    "BiMamba",
    "Dimba",
    "DimbaBlock",
    "DimbaConfig",
    "count_parameters",
    "equal_params_config",
    "sincos_pos_embed_2d",
    "timestep_embedding",
]

ARCHS = ("dimba", "attention", "mamba")
MIXERS = ("mamba1", "mamba2", "transmamba")


@dataclass
class DimbaConfig:
    """Network settings. Defaults are Dimba-L/2 on 32×32×4 latents (256×256 images through an SD VAE).

    ``depth`` counts iterations: one DimbaBlock + K BiMamba blocks (``dimba``), one DimbaBlock without Mamba
    (``attention``), or one adaLN BiMamba+MLP block (``mamba``). ``cond_dim`` None: class-conditional with
    ``num_classes`` classes; an int: text-conditional on (b, L ≤ ``max_cond_tokens``, cond_dim) features.
    """

    image_size: int = 32
    in_channels: int = 4
    patch_size: int = 2
    d_model: int = 1152
    depth: int = 28
    n_heads: int = 16
    mlp_ratio: float = 4.0
    arch: str = "dimba"
    mamba_per_attention: int = 1  # K in attention:Mamba = M:K (dimba only)
    attention_per_mamba: int = 1  # M: the K Mamba blocks follow every M-th attention block
    mixer: str = "mamba1"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64  # Mamba-2 / TransMamba head size
    transpoint: int = 0  # TransMamba: tokens before it use attention
    chunk_size: int = 64  # SSD chunk (speed only): the CPU's fastest, measured by experiments/ssd_cpu.py
    learn_sigma: bool = True
    num_classes: int = 1000
    cond_dim: int | None = None
    max_cond_tokens: int = 120
    class_dropout: float = 0.1  # probability a training condition is replaced by the null embedding
    adaln_condition: bool = False  # also add the pooled condition to e_t (DiT's class path; see module doc)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"DimbaConfig: arch {self.arch!r} not in {ARCHS}")
        if self.mixer not in MIXERS:
            raise ValueError(f"DimbaConfig: mixer {self.mixer!r} not in {MIXERS}")
        for name in ("image_size", "in_channels", "patch_size", "d_model", "depth", "n_heads", "d_state"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DimbaConfig: {name} must be a positive int, got {v!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"DimbaConfig: image_size {self.image_size} must be a multiple of "
                f"patch_size {self.patch_size}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"DimbaConfig: d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        if self.d_model % 4:
            raise ValueError(f"DimbaConfig: d_model {self.d_model} must be a multiple of 4 (2-D sin-cos)")
        if self.attention_per_mamba < 1:
            raise ValueError(f"DimbaConfig: attention_per_mamba must be >= 1, got {self.attention_per_mamba}")
        if self.mamba_per_attention < 0:
            raise ValueError(f"DimbaConfig: mamba_per_attention must be >= 0, got {self.mamba_per_attention}")
        if self.cond_dim is None and self.num_classes < 1:
            raise ValueError("DimbaConfig: num_classes must be >= 1 for class conditioning (or set cond_dim)")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"DimbaConfig: class_dropout must be in [0, 1), got {self.class_dropout}")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    @property
    def n_mamba_blocks(self) -> int:
        if self.arch == "dimba":
            return (self.depth // self.attention_per_mamba) * self.mamba_per_attention
        return self.depth if self.arch == "mamba" else 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DimbaConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Presets. Dimba-L/2: the paper's (depth 28, D 1152, 16 heads). Dimba-G/2: ours, ViT-g's width/depth/heads
# (the paper names a larger model but gives no shape). Text presets read 4096-d T5 features (PixArt-α).
# "-tiny" flavours: single-channel digits for tests and CPU training. dimba-tiny is the CPU default of
# `transmamba diffuse train`: the native 8×8 digits, patch 2 (16 tokens), ε-prediction, and a Mamba-1 with
# d_state 8 and expand 1 — the chunked CPU scan costs O(b·d_inner·T·d_state), and at the paper's 16 / 2 the
# four scans took ~4× the time of the attention blocks.
PRESETS: dict[str, dict] = {
    "dimba-l/2": dict(d_model=1152, depth=28, n_heads=16, cond_dim=4096, max_cond_tokens=120),
    "dimba-g/2": dict(d_model=1408, depth=40, n_heads=16, cond_dim=4096, max_cond_tokens=120),
    "dimba-l/2-class": dict(d_model=1152, depth=28, n_heads=16, num_classes=1000),
    "dimba-tiny": dict(
        image_size=8, in_channels=1, patch_size=2, d_model=128, depth=2, n_heads=4, num_classes=10,
        d_state=8, expand=1, learn_sigma=False, adaln_condition=True,
    ),
    "dimba-l/2-tiny": dict(image_size=16, in_channels=1, d_model=64, depth=2, n_heads=4, num_classes=10),
    "dimba-g/2-tiny": dict(image_size=16, in_channels=1, d_model=96, depth=3, n_heads=4, num_classes=10),
}


def preset_config(name: str, **overrides) -> DimbaConfig:
    """The preset's config with ``overrides`` applied (e.g. ``arch="attention"``, ``mixer="mamba2"``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown Dimba preset {name!r}; choose from {sorted(PRESETS)}")
    return DimbaConfig(**{**PRESETS[name], **overrides})


# ------------------------------------------------------------------------------------------ embeddings


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t (b,) float steps -> (b, dim): [cos(t·ω_k), sin(t·ω_k)], ω_k = max_period^(-k/(dim/2)), k < dim/2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D position embedding (grid², dim), row-major token order: the first dim/2 channels encode the
    column, the last dim/2 the row, each as 1-D sin-cos [sin(p·ω_k), cos(p·ω_k)], ω_k = 10000^(-k/(dim/4))."""
    if dim % 4:
        raise ValueError(f"sincos_pos_embed_2d: dim {dim} must be a multiple of 4")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    coords = np.arange(grid, dtype=np.float64)
    rows, cols = np.meshgrid(coords, coords, indexing="ij")

    def one_d(pos: np.ndarray) -> np.ndarray:
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([one_d(cols), one_d(rows)], axis=1)).float()


class TimestepEmbedder(nn.Module):
    """t (b,) -> (b, D): Linear(256 → D), SiLU, Linear(D → D) on the 256-d sinusoid."""

    def __init__(self, d_model: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


class ConditionEmbedder(nn.Module):
    """Condition -> tokens (b, L, D), with the learned null condition of classifier-free guidance.

    Class mode: labels (b,) long in [0, num_classes) -> one token from a table of num_classes + 1 rows (the
    last is the null class). Text mode: features (b, L, cond_dim) -> Linear, GELU(tanh), Linear (PixArt's
    caption embedder); the null condition is a learned (max_cond_tokens, cond_dim) feature block.
    ``drop`` (b,) bool replaces those rows by the null condition.
    """

    def __init__(self, cfg: DimbaConfig):
        super().__init__()
        self.text = cfg.cond_dim is not None
        self.num_classes = cfg.num_classes
        if self.text:
            self.max_tokens = cfg.max_cond_tokens
            self.proj = nn.Sequential(
                nn.Linear(cfg.cond_dim, cfg.d_model),
                nn.GELU(approximate="tanh"),
                nn.Linear(cfg.d_model, cfg.d_model),
            )
            self.null = nn.Parameter(torch.randn(cfg.max_cond_tokens, cfg.cond_dim) / cfg.cond_dim**0.5)
            self.cond_dim = cfg.cond_dim
        else:
            self.table = nn.Embedding(cfg.num_classes + 1, cfg.d_model)

    def forward(
        self, cond: torch.Tensor, drop: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (tokens (b, L, D), mask (b, L) bool or None). Dropped text rows attend to all null tokens."""
        if not self.text:
            if cond.dim() != 1 or cond.dtype not in (torch.int64, torch.int32):
                raise ValueError(
                    f"Dimba: class condition must be (b,) integer labels, got {tuple(cond.shape)} "
                    f"{cond.dtype}"
                )
            if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.num_classes):
                raise ValueError(
                    f"Dimba: class labels must be in [0, {self.num_classes}), got "
                    f"[{int(cond.min())}, {int(cond.max())}]"
                )
            labels = cond.long()
            if drop is not None:
                labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
            return self.table(labels)[:, None], None
        if cond.dim() != 3 or cond.shape[-1] != self.cond_dim or cond.shape[1] > self.max_tokens:
            raise ValueError(
                f"Dimba: text condition must be (b, L <= {self.max_tokens}, {self.cond_dim}), "
                f"got {tuple(cond.shape)}"
            )
        b, L, _ = cond.shape
        if mask is None:
            mask = torch.ones(b, L, dtype=torch.bool, device=cond.device)
        if drop is not None:
            cond = torch.where(drop[:, None, None], self.null[:L].to(cond.dtype)[None], cond)
            mask = mask | drop[:, None]
        return self.proj(cond), mask


# ------------------------------------------------------------------------------------------ blocks


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (b, T, D) ⊙ (1 + scale) + shift, shift/scale (b, 1, D)."""
    return x * (1 + scale) + shift


class SelfAttention(nn.Module):
    """Bidirectional multi-head softmax attention over all tokens (no mask), SDPA; qkv with bias."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, h, t, dh)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class CrossAttention(nn.Module):
    """Queries from the image tokens (b, T, D), keys/values from condition tokens (b, L, D); mask (b, L) bool
    marks real condition tokens (False: padding, not attended)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        h, dh = self.n_heads, d // self.n_heads
        q = self.q(x).view(b, t, h, dh).transpose(1, 2)
        k, v = self.kv(c).view(b, c.shape[1], 2, h, dh).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (b, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: float):
        super().__init__()
        hidden = int(d_model * ratio)
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _make_mixer(cfg: DimbaConfig) -> nn.Module:
    """One scan direction: the configured library mixer at width D."""
    if cfg.mixer == "mamba1":
        from transmamba.layers.mamba1 import Mamba1

        return Mamba1(cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand)
    d_inner = cfg.expand * cfg.d_model
    headdim = min(cfg.headdim, d_inner)
    while d_inner % headdim:
        headdim //= 2
    kw = dict(
        d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, headdim=headdim, chunk_size=cfg.chunk_size
    )
    if cfg.mixer == "mamba2":
        from transmamba.layers.mamba2 import Mamba2

        return Mamba2(cfg.d_model, **kw)
    from transmamba.layers.transmamba import TransMamba

    return TransMamba(cfg.d_model, transpoint=cfg.transpoint, **kw)


def _call(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = layer(x)
    return out[0] if isinstance(out, tuple) else out


class BiMamba(nn.Module):
    """Bidirectional scan: ``BiMamba(u) = fwd(u) + flip(bwd(flip(u)))`` over the token axis of u (b, T, D).

    ``fwd`` and ``bwd`` are two mixers (``forward(hidden (b, T, D)) -> (b, T, D)``) with separate parameters;
    token t of the backward branch sees tokens t..T-1, so every output sees the whole sequence.
    """

    def __init__(self, fwd: nn.Module, bwd: nn.Module):
        super().__init__()
        self.fwd, self.bwd = fwd, bwd

    @classmethod
    def from_config(cls, cfg: DimbaConfig) -> BiMamba:
        return cls(_make_mixer(cfg), _make_mixer(cfg))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 3:
            raise ValueError(f"BiMamba: input must be (b, T, D), got {tuple(u.shape)}")
        return _call(self.fwd, u) + _call(self.bwd, u.flip(1)).flip(1)


class DimbaBlock(nn.Module):
    """PixArt block: adaLN-modulated gated self-attention, cross-attention to the condition, gated MLP.

    ``forward(h (b, T, D), s (b, 6·D) shared adaLN projection, c (b, L, D), mask (b, L) | None)``.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(d_model, n_heads)
        self.cross_attn = CrossAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(d_model, mlp_ratio)
        self.table = nn.Parameter(torch.empty(6, d_model))  # per-block offsets to the shared projection

    def forward(self, h, s, c, mask=None):
        b, _, d = h.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            (self.table[None] + s.view(b, 6, d)).unsqueeze(2).unbind(1)
        )
        h = h + gate1 * self.attn(_modulate(self.norm1(h), shift1, scale1))
        h = h + self.cross_attn(h, c, mask)
        return h + gate2 * self.mlp(_modulate(self.norm2(h), shift2, scale2))


class MambaBlock(nn.Module):
    """Dimba's Mamba block: ``h + BiMamba(RMSNorm(h))``; no timestep or condition input."""

    def __init__(self, cfg: DimbaConfig):
        super().__init__()
        from transmamba.layers.norm import RMSNorm

        self.norm = RMSNorm(cfg.d_model, eps=1e-5)
        self.mixer = BiMamba.from_config(cfg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mixer(self.norm(h))


class AdaMambaBlock(nn.Module):
    """Mamba-only baseline block (DiS-style): adaLN-gated BiMamba then adaLN-gated MLP (see module doc)."""

    def __init__(self, cfg: DimbaConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mixer = BiMamba.from_config(cfg)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(d, cfg.mlp_ratio)
        self.table = nn.Parameter(torch.empty(6, d))

    def forward(self, h, s, c=None, mask=None):
        b, _, d = h.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            (self.table[None] + s.view(b, 6, d)).unsqueeze(2).unbind(1)
        )
        h = h + gate1 * self.mixer(_modulate(self.norm1(h), shift1, scale1))
        return h + gate2 * self.mlp(_modulate(self.norm2(h), shift2, scale2))


class FinalLayer(nn.Module):
    """LN, modulate with (E + e_t) (2, D), Linear(D → p²·C')."""

    def __init__(self, d_model: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.table = nn.Parameter(torch.randn(2, d_model) / d_model**0.5)
        self.linear = nn.Linear(d_model, patch * patch * out_channels)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.table[None] + e[:, None]).unsqueeze(2).unbind(1)
        return self.linear(_modulate(self.norm(h), shift, scale))


# ------------------------------------------------------------------------------------------ the model


class Dimba(nn.Module):
    """``forward(x (b, C, H, W), t (b,), cond, *, drop=None, mask=None) -> (b, C', H, W)``; see module doc.

    ``cond``: labels (b,) (class mode) or features (b, L, cond_dim) with optional ``mask`` (b, L) (text mode).
    ``drop`` (b,) bool: rows that get the null condition (classifier-free guidance); in training mode and with
    ``drop=None`` each row is dropped with probability ``class_dropout``.
    """

    def __init__(self, config: DimbaConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.d_model
        self.x_embedder = nn.Conv2d(cfg.in_channels, d, cfg.patch_size, stride=cfg.patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, cfg.grid)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(d)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))  # adaLN-single shared projection
        self.cond_embedder = ConditionEmbedder(cfg)
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            if cfg.arch == "mamba":
                layers.append(AdaMambaBlock(cfg))
                continue
            layers.append(DimbaBlock(d, cfg.n_heads, cfg.mlp_ratio))
            if cfg.arch == "dimba" and (i + 1) % cfg.attention_per_mamba == 0:
                layers.extend(MambaBlock(cfg) for _ in range(cfg.mamba_per_attention))
        self.layers = nn.ModuleList(layers)
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.out_channels)
        self.initialize()

    @torch.no_grad()
    def initialize(self) -> None:
        """Xavier linears (mixers keep their own init), adaLN-Zero-style zeros (module doc)."""
        cfg = self.config
        mixers = {id(m) for layer in self.layers for m in layer.modules() if isinstance(m, BiMamba)}
        skip: set[int] = set()
        for m in self.modules():
            if id(m) in mixers:
                skip.update(id(x) for x in m.modules())
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in skip:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for lin in self.t_embedder.mlp:
            if isinstance(lin, nn.Linear):
                nn.init.normal_(lin.weight, std=0.02)
        nn.init.zeros_(self.t_block[1].weight)
        nn.init.zeros_(self.t_block[1].bias)
        if hasattr(self.cond_embedder, "table"):
            nn.init.normal_(self.cond_embedder.table.weight, std=0.02)
        n_mamba = max(cfg.n_mamba_blocks, 1)
        for layer in self.layers:
            if hasattr(layer, "table"):
                layer.table.copy_(torch.randn_like(layer.table) / cfg.d_model**0.5)
                layer.table[2].zero_()  # gate α₁
                layer.table[5].zero_()  # gate α₂
            if isinstance(layer, DimbaBlock):
                nn.init.zeros_(layer.cross_attn.proj.weight)
                nn.init.zeros_(layer.cross_attn.proj.bias)
            for m in layer.modules():
                if isinstance(m, BiMamba):
                    for mixer in (m.fwd, m.bwd):
                        if hasattr(mixer, "out_proj"):
                            mixer.out_proj.weight.div_(math.sqrt(n_mamba))
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def patchify_check(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"Dimba: x must be (b, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % cfg.patch_size or x.shape[3] % cfg.patch_size:
            raise ValueError(
                f"Dimba: H, W = {tuple(x.shape[2:])} must be multiples of patch {cfg.patch_size}"
            )

    def unpatchify(self, h: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """(b, gh·gw, p²·C') -> (b, C', gh·p, gw·p)."""
        p, c = self.config.patch_size, self.config.out_channels
        b = h.shape[0]
        h = h.view(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, c, gh * p, gw * p)

    def forward(self, x, t, cond, *, drop: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        cfg = self.config
        self.patchify_check(x)
        b = x.shape[0]
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"Dimba: t must be (b,) = ({b},), got {tuple(t.shape)}")
        if drop is None and self.training and cfg.class_dropout > 0:
            drop = torch.rand(b, device=x.device) < cfg.class_dropout
        gh, gw = x.shape[2] // cfg.patch_size, x.shape[3] // cfg.patch_size
        h = self.x_embedder(x).flatten(2).transpose(1, 2)  # (b, T, D)
        if (gh, gw) == (cfg.grid, cfg.grid):
            h = h + self.pos_embed.to(h)
        else:  # another resolution: a square grid's embedding, or an error for non-square
            if gh != gw:
                raise ValueError(f"Dimba: non-square token grid {gh}x{gw} at a size other than the config's")
            h = h + sincos_pos_embed_2d(cfg.d_model, gh).to(h)[None]
        e = self.t_embedder(t)  # (b, D)
        c, cmask = self.cond_embedder(cond, drop, mask)  # (b, L, D)
        if cfg.arch == "mamba" or cfg.adaln_condition:  # pooled condition joins the timestep embedding
            if cmask is None:
                pooled = c.mean(1)
            else:
                w = cmask.to(c.dtype)[..., None]
                pooled = (c * w).sum(1) / w.sum(1).clamp(min=1)
            e = e + pooled
        s = self.t_block(e)  # (b, 6·D)
        for layer in self.layers:
            h = layer(h) if isinstance(layer, MambaBlock) else layer(h, s, c, cmask)
        return self.unpatchify(self.final_layer(h, e), gh, gw)

    def forward_with_cfg(self, x, t, cond, cfg_scale: float, *, mask=None) -> torch.Tensor:
        """Classifier-free guidance: one pass on [cond; null]; the ε channels become ``u + s·(c − u)``, the
        learned-variance channels (if any) are the conditional pass's (as DiT does)."""
        b = x.shape[0]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        cond2 = torch.cat([cond, cond])
        mask2 = None if mask is None else torch.cat([mask, mask])
        out = self(torch.cat([x, x]), torch.cat([t, t]) if t.dim() else t, cond2, drop=drop, mask=mask2)
        c_out, u_out = out.chunk(2)
        ch = self.config.in_channels
        eps = cfg_combine(c_out[:, :ch], u_out[:, :ch], cfg_scale)
        return torch.cat([eps, c_out[:, ch:]], dim=1)

    # ----------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (``{"model": config, **extra}``)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(d / "model.safetensors"))
        (d / "config.json").write_text(
            json.dumps({"model": self.config.to_dict(), **(extra or {})}, indent=2, default=str) + "\n"
        )
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> tuple[Dimba, dict]:
        """Load a folder written by ``save_pretrained``; returns (model, the config.json dict)."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
            raise FileNotFoundError(f"{d}: expected config.json and model.safetensors (a Dimba model folder)")
        meta = json.loads((d / "config.json").read_text())
        model = cls(DimbaConfig.from_dict(meta["model"]))
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        return model, meta


def cfg_combine(cond_out: torch.Tensor, uncond_out: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``u + s·(c − u)``; s = 1: the conditional output, s = 0: unconditional."""
    return uncond_out + scale * (cond_out - uncond_out)


def count_parameters(cfg: DimbaConfig) -> int:
    """Parameter count of ``Dimba(cfg)`` built on the meta device (no memory allocated)."""
    with torch.device("meta"):
        model = Dimba(cfg)
    return sum(p.numel() for p in model.parameters())


def equal_params_config(cfg: DimbaConfig, arch: str, **overrides) -> DimbaConfig:
    """``cfg`` turned into ``arch`` with the depth whose parameter count is closest to ``cfg``'s."""
    target = count_parameters(cfg)
    best, best_gap = None, math.inf
    lo, hi = 1, 4 * cfg.depth * max(1, cfg.mamba_per_attention) + 4
    for depth in range(lo, hi + 1):
        cand = replace(cfg, arch=arch, depth=depth, **overrides)
        gap = abs(count_parameters(cand) - target)
        if gap < best_gap:
            best, best_gap = cand, gap
        elif best is not None and gap > best_gap:
            break  # counts grow monotonically with depth
    assert best is not None
    return best
