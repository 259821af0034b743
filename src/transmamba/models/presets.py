"""Named model presets: the papers' shapes, same-size baselines, and a `-tiny` debug flavour of each.

    get_preset("transmamba-1.5b")           -> ModelConfig (a fresh copy each call)
    get_preset("transmamba-1.5b", vocab_size=32000)   overrides are applied and validated
    list_presets()                          -> names in registration order
    register_preset(name, factory, ...)     add your own (factory() -> ModelConfig)

Sizes and where they come from are in docs/presets.md (with the parameter arithmetic). `-tiny` flavours keep
each family's layer kinds and options at d_model 64 with a 512-token vocabulary, for tests and CPU runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from transmamba.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    factory: Callable[[], ModelConfig]
    description: str
    nominal_params: int | None = None  # the size the source names (e.g. 8e9), None for debug/baseline shapes
    source: str | None = None  # paper / origin
    # which count the nominal size names: "total" or "non_embedding" (see docs/presets.md)
    count_basis: str = "total"

    def config(self, **overrides: Any) -> ModelConfig:
        cfg = self.factory()
        return cfg.replace(**overrides) if overrides else cfg


_REGISTRY: dict[str, Preset] = {}


def register_preset(
    name: str,
    factory: Callable[[], ModelConfig] | ModelConfig,
    description: str = "",
    *,
    nominal_params: int | None = None,
    source: str | None = None,
    count_basis: str = "total",
    overwrite: bool = False,
) -> Preset:
    """Register a preset under `name`. `factory` is a ModelConfig or a zero-argument callable making one."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"preset {name!r} is already registered (pass overwrite=True to replace it)")
    if isinstance(factory, ModelConfig):
        frozen = factory.to_dict()
        make: Callable[[], ModelConfig] = lambda: ModelConfig.from_dict(dict(frozen))  # noqa: E731
    else:
        make = factory
    if count_basis not in ("total", "non_embedding"):
        raise ValueError(f"count_basis must be 'total' or 'non_embedding', got {count_basis!r}")
    preset = Preset(name, make, description, nominal_params, source, count_basis)
    _REGISTRY[name] = preset
    return preset


def get_preset_info(name: str) -> Preset:
    if name not in _REGISTRY:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A fresh ModelConfig for preset `name`, with `overrides` applied (validated)."""
    return get_preset_info(name).config(**overrides)


def list_presets() -> list[str]:
    return list(_REGISTRY)


# ---------------------------------------------------------------------------------------------------
# The presets. Shapes shared by a family live in one dict so the baselines are truly the same size.

_TINY = dict(vocab_size=512, d_model=64, n_heads=4, d_ff=128, d_state=16, headdim=16, ngroups=2,
             chunk_size=16, max_seq_len=256, n_experts=4, top_k=2)

# TransMamba (arXiv 2503.24067): hidden 1536, FFN 4096, 16 heads. ngroups = 16: the attention path of a
# TransMamba layer uses Q = C and K = B, which have one head per *group*; with Mamba-2's usual ngroups = 1
# all value heads would share a single attention pattern. 16 groups give 16 distinct Q/K heads (of
# d_state = 128 channels), matching the 16 attention heads of the paper's models; each group serves
# 48 / 16 = 3 value heads of headdim 64.
_TM = dict(vocab_size=151936, d_model=1536, n_heads=16, d_ff=4096, mlp_act="gelu", d_state=128, headdim=64,
           expand=2, ngroups=16, chunk_size=256, tie_embeddings=False, max_seq_len=8192, rope=True)
# (T- pairs, nominal size, which count the name refers to): at hidden 1536 the untied 152K-token
# embeddings alone are 467M, so "400M" can only name the non-embedding count (docs/presets.md).
# FFN of the equal-size Transformer: per layer pair, attention (4 x 1536^2) + MLP (2 x 1536 x d_ff) equals
# Mamba-2 (in_proj 1536 x 10288 + out_proj 3072 x 1536 + conv/norm) + MLP (2 x 1536 x 4096) at d_ff = 7717;
# 7680 (a multiple of 256) is 0.35% short.
_TM_EQ_FF = 7680
_TM_SIZES = {"400m": (12, 400e6, "non_embedding"), "1.5b": (32, 1.5e9, "total")}

# Mamba-2-Hybrid 8B (arXiv 2406.07887): 24 Mamba-2 + 4 attention + 28 MLP = 56 sub-layers, hidden 4096,
# 32 heads with 8 KV groups, no position embedding, squared-ReLU MLP of 16384, 256K vocabulary, untied.
HYBRID_8B_PATTERN = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"
_H8 = dict(vocab_size=256000, d_model=4096, n_heads=32, n_kv_heads=8, d_ff=16384, mlp_act="relu2",
           d_state=128, headdim=64, expand=2, ngroups=8, chunk_size=256, tie_embeddings=False,
           max_seq_len=4096, rope=False)

# Jamba (arXiv 2403.19887): 8-layer blocks, Mamba-1 : attention = 7 : 1 (attention at layer 4 of 8), MoE
# (16 experts, top-2) in place of the MLP on every other layer, no position embedding. As in the released
# model (and HF transformers' Jamba): RMSNorms on dt / B / C inside each Mamba-1 mixer, and the router's
# top-2 softmax probabilities used as they are (not renormalised to sum to 1).
_JAMBA_ARCH = dict(m1_inner_layernorms=True, moe_renormalize=False)
JAMBA_BLOCK = "S-SES-SE*-SES-SE"
_JAMBA_52B = dict(vocab_size=65536, d_model=4096, n_heads=32, n_kv_heads=8, d_ff=14336, mlp_act="swiglu",
                  m1_d_state=16, m1_expand=2, m1_d_conv=4, m1_dt_rank=256, n_experts=16, top_k=2,
                  aux_loss_coef=0.001, tie_embeddings=False, max_seq_len=4096, rope=False, **_JAMBA_ARCH)
_JAMBA_SMALL = dict(vocab_size=32000, d_model=512, n_heads=8, n_kv_heads=2, d_ff=1024, mlp_act="swiglu",
                    m1_d_state=16, m1_expand=2, n_experts=16, top_k=2, aux_loss_coef=0.01,
                    tie_embeddings=True, max_seq_len=2048, rope=False, **_JAMBA_ARCH)


def _cfg(**kw: Any) -> Callable[[], ModelConfig]:
    return lambda: ModelConfig(**kw)


def _register_all() -> None:
    for size, (n, nominal, basis) in _TM_SIZES.items():
        register_preset(
            f"transmamba-{size}", _cfg(pattern="T-" * n, transpoints="V9", **_TM),
            f"TransMamba {size.upper()}: 'T-' x {n} ({2 * n} sub-layers), hidden 1536, FFN 4096, ngroups 16 "
            "(16 distinct Q/K heads on the attention path), V9 TransPoint schedule",
            nominal_params=int(nominal), source="arXiv 2503.24067", count_basis=basis)
        register_preset(
            f"transformer-{size}", _cfg(pattern="*-" * n, **_TM),
            f"Transformer baseline the shape of transmamba-{size}: '*-' x {n}, 16 heads, RoPE")
        register_preset(
            f"transformer-{size}-eq", _cfg(pattern="*-" * n, **{**_TM, "d_ff": _TM_EQ_FF}),
            f"Transformer with transmamba-{size}'s non-embedding parameter count (within 0.4%): '*-' x {n} "
            f"with FFN {_TM_EQ_FF} instead of 4096 (an attention mixer has 9.4M weights, Mamba-2 20.6M)")
        register_preset(
            f"mamba2-{size}", _cfg(pattern="M-" * n, **_TM),
            f"Mamba-2 baseline the shape of transmamba-{size}: 'M-' x {n}")
    register_preset(
        "transmamba-tiny", _cfg(pattern="T-" * 4, transpoints="V9", schedule_train_len=256, **_TINY),
        "debug TransMamba: 'T-' x 4 at d_model 64, V9 scaled to 256 tokens")
    register_preset("transformer-tiny", _cfg(pattern="*-" * 4, **_TINY), "debug Transformer: '*-' x 4")
    register_preset("mamba2-tiny", _cfg(pattern="M-" * 4, **_TINY), "debug Mamba-2: 'M-' x 4")
    for size in _TM_SIZES:
        register_preset(f"transmamba-{size}-tiny", _cfg(pattern="T-" * 4, transpoints="V9",
                                                       schedule_train_len=256, **_TINY),
                        f"debug flavour of transmamba-{size}")
        register_preset(f"transformer-{size}-tiny", _cfg(pattern="*-" * 4, **_TINY),
                        f"debug flavour of transformer-{size}")
        register_preset(f"mamba2-{size}-tiny", _cfg(pattern="M-" * 4, **_TINY),
                        f"debug flavour of mamba2-{size}")

    register_preset(
        "mamba2-hybrid-8b", _cfg(pattern=HYBRID_8B_PATTERN, **_H8),
        "Mamba-2-Hybrid 8B: 24 Mamba-2, 4 attention (GQA 32q/8kv, no position embedding), 28 MLP layers",
        nominal_params=int(8e9), source="arXiv 2406.07887")
    register_preset(
        "transformer-8b", _cfg(pattern="*-" * 32, **{**_H8, "rope": True}),
        "Transformer baseline of Mamba-2-Hybrid 8B: 32 x '*-', GQA 32q/8kv, RoPE",
        nominal_params=int(8e9), source="arXiv 2406.07887")
    register_preset(
        "mamba2-8b", _cfg(pattern="M" * 56, **_H8),
        "Mamba-2 baseline of Mamba-2-Hybrid 8B: 56 Mamba-2 layers, no MLP",
        nominal_params=int(8e9), source="arXiv 2406.07887")
    tiny_h8 = {**_TINY, "n_kv_heads": 2, "rope": False, "mlp_act": "relu2"}
    register_preset("mamba2-hybrid-8b-tiny", _cfg(pattern="M-M-M*-M-", **tiny_h8),
                    "debug flavour of mamba2-hybrid-8b")
    register_preset("transformer-8b-tiny", _cfg(pattern="*-" * 4, **{**tiny_h8, "rope": True}),
                    "debug flavour of transformer-8b")
    register_preset("mamba2-8b-tiny", _cfg(pattern="M" * 8, **tiny_h8), "debug flavour of mamba2-8b")

    register_preset(
        "jamba-52b", _cfg(pattern=JAMBA_BLOCK * 4, **_JAMBA_52B),
        "Jamba 52B (12B active): 4 blocks of 8 layers, Mamba-1:attention 7:1, MoE 16 experts top-2 "
        "every other layer", nominal_params=int(52e9), source="arXiv 2403.19887")
    register_preset(
        "jamba-small", _cfg(pattern=JAMBA_BLOCK * 2, **_JAMBA_SMALL),
        "trainable Jamba: 2 blocks of 8 layers at d_model 512, MoE 16 experts top-2")
    tiny_jamba = {**_TINY, "rope": False, **_JAMBA_ARCH}
    register_preset("jamba-tiny", _cfg(pattern=JAMBA_BLOCK, **tiny_jamba),
                    "debug Jamba: one 8-layer block at d_model 64, 4 experts top-2")
    register_preset("jamba-52b-tiny", _cfg(pattern=JAMBA_BLOCK, **tiny_jamba),
                    "debug flavour of jamba-52b")
    register_preset("jamba-small-tiny", _cfg(pattern=JAMBA_BLOCK, **tiny_jamba),
                    "debug flavour of jamba-small")
    # the baselines keep their own mixers: no Jamba-specific options
    small_plain = {k: v for k, v in _JAMBA_SMALL.items() if k not in _JAMBA_ARCH}
    register_preset("transformer-jamba-small", _cfg(pattern="*-" * 16, **{**small_plain, "rope": True}),
                    "dense Transformer baseline the width of jamba-small: '*-' x 16")
    register_preset("mamba2-jamba-small", _cfg(pattern="M-" * 16, **small_plain, headdim=64, d_state=64),
                    "Mamba-2 baseline the width of jamba-small: 'M-' x 16")


_register_all()
