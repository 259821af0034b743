"""Read an HF transformers Llama / Mistral directory (config.json + safetensors, sharded or not) into a
`CausalLM` of `*-` layers, so it can be converted to TransMamba and used as a distillation teacher.

Config mapping: hidden_size -> d_model, num_hidden_layers L -> pattern "*-" * L, num_attention_heads ->
n_heads, num_key_value_heads -> n_kv_heads, head_dim, intermediate_size -> d_ff (SwiGLU, hidden_act silu),
rms_norm_eps -> norm_eps, RoPE theta -> rope_theta, tie_word_embeddings, vocab_size,
max_position_embeddings -> max_seq_len. Tensors: HF layer i's attention block is our block 2i, its MLP
block 2i + 1 (input_layernorm / post_attention_layernorm are their pre-norms). Only safetensors are read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from transmamba.conversion.to_transmamba import ConversionError

SUPPORTED = ("llama", "mistral")


def _rope_theta(cfg: dict) -> float:
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", None):
        raise ConversionError(f"RoPE scaling {kind!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def llama_model_config(cfg: dict):
    from transmamba.models.config import ModelConfig

    kind = cfg.get("model_type")
    if kind not in SUPPORTED:
        raise ConversionError(f"model_type {kind!r} is not a supported Transformer; supported: {SUPPORTED}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"hidden_act {cfg.get('hidden_act')!r}: only silu (SwiGLU) MLPs are supported")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConversionError("attention_bias / mlp_bias = true is not supported")
    heads = int(cfg["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(cfg["vocab_size"]), d_model=int(cfg["hidden_size"]),
        pattern="*-" * int(cfg["num_hidden_layers"]), n_heads=heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads), rope=True,
        rope_theta=_rope_theta(cfg),
        d_ff=int(cfg["intermediate_size"]), mlp_act="swiglu", norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
    )


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ConversionError(f"{directory}: no model.safetensors or model.safetensors.index.json "
                              "(only safetensors checkpoints are read)")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(directory / name)))
    return tensors


def _rename(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "embed.weight"
    if name == "model.norm.weight":
        return "norm.weight"
    if name == "lm_head.weight":
        return name
    parts = name.split(".")
    if parts[:2] != ["model", "layers"] or len(parts) < 5:
        raise ConversionError(f"unexpected tensor {name!r} in a Llama checkpoint")
    i, rest = int(parts[2]), ".".join(parts[3:])
    table = {
        "input_layernorm.weight": (2 * i, "norm.weight"),
        "post_attention_layernorm.weight": (2 * i + 1, "norm.weight"),
    }
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        table[f"self_attn.{proj}.weight"] = (2 * i, f"mixer.{proj}.weight")
    for proj in ("gate_proj", "up_proj", "down_proj"):
        table[f"mlp.{proj}.weight"] = (2 * i + 1, f"mixer.{proj}.weight")
    if rest not in table:
        raise ConversionError(f"unexpected tensor {name!r} in a Llama checkpoint")
    block, leaf = table[rest]
    return f"blocks.{block}.{leaf}"


def load_hf_llama(directory: str | Path):
    """An HF Llama/Mistral directory -> `CausalLM` (fp32, eval mode)."""
    from transmamba.models.lm import CausalLM

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConversionError(f"{directory}: no config.json")
    config = llama_model_config(json.loads((directory / "config.json").read_text()))
    model = CausalLM(config)
    tensors = {_rename(k): v.float() for k, v in _read_tensors(directory).items()}
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    model.load_checkpoint_tensors(tensors, source=str(directory))
    return model.eval()
