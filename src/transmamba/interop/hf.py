"""Hugging Face transformers checkpoints <-> `CausalLM`: config mapping and tensor naming per model_type.

    config_from_hf(hf_config: dict) -> ModelConfig         HF config.json -> ours (errors name the field)
    load_hf(directory) -> CausalLM                         config.json + safetensors (sharded too) or .bin
    save_hf(model, directory, model_type=None)             writes a directory HF transformers loads
    hf_model_type_for(config) -> str                       which HF architecture a config can be written as

Supported model_types, and how their layers become pattern characters (one HF decoder layer may hold a
token mixer and a feed-forward, i.e. two of our residual sub-layers):

    mamba2      Mamba2ForCausalLM       'M' per layer                      backbone.layers.i.{norm, mixer}
    mamba       MambaForCausalLM        'S' per layer                      backbone.layers.i.{norm, mixer}
    nemotron_h  NemotronHForCausalLM    'M' / '*' / '-' per layers_block_type entry (no RoPE, relu² MLP)
    jamba       JambaForCausalLM        ('S' or '*') + ('-' or 'E') per layer, from the attention and expert
                                        periods/offsets; Jamba's inner dt/B/C RMSNorms, unrenormalised top-k
    bamba       BambaForCausalLM        ('M' or '*') + '-' per layer; partial rotary from rope_parameters
    llama       LlamaForCausalLM        '*-' per layer (default RoPE only)
    qwen2       Qwen2ForCausalLM        '*-' per layer, q/k/v biases (no sliding window)
    mistral     MistralForCausalLM      '*-' per layer (sliding_window null only)

The mixers' own tensor names (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj, x_proj, dt_proj,
q/k/v/o_proj, gate/up/down_proj, router, experts.e.*) are the same here and in HF, so a tensor maps by
replacing its layer prefix. Jamba experts stored fused (experts.gate_up_proj (E, 2I, D), experts.down_proj
(E, D, I)) are split per expert. Not supported, with the reason in the error: NemotronH's MoE layers (sigmoid
router with grouped top-k and shared experts), zamba2 (shared attention blocks with LoRA adapters),
falcon_h1 (attention and Mamba-2 in parallel inside one layer, muP multipliers), granitemoehybrid
(embedding/residual/logit multipliers and shared experts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from transmamba.errors import UsageError
from transmamba.interop import files
from transmamba.models.config import ModelConfig

SUPPORTED = ("mamba2", "mamba", "nemotron_h", "jamba", "bamba", "llama", "qwen2", "mistral")
UNSUPPORTED = {
    "zamba2": "its shared attention blocks (one set of weights reused at several depths, with per-depth LoRA "
    "adapters and the embedding concatenated to the input) have no counterpart here",
    "falcon_h1": "each layer runs attention and Mamba-2 in parallel on the same input and sums them, with "
    "muP multipliers; the layer kinds here are sequential residual sub-layers",
    "granitemoehybrid": "embedding/residual/attention/logit multipliers and shared experts have no "
    "counterpart here",
    "falcon_mamba": "its RMSNorms on B, C and dt without weights have no counterpart here",
}
ARCHITECTURES = {
    "mamba2": "Mamba2ForCausalLM",
    "mamba": "MambaForCausalLM",
    "nemotron_h": "NemotronHForCausalLM",
    "jamba": "JambaForCausalLM",
    "bamba": "BambaForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
NEMOTRON_KINDS = {
    "mamba": "M",
    "linear_attention": "M",
    "M": "M",
    "attention": "*",
    "full_attention": "*",
    "*": "*",
    "mlp": "-",
    "-": "-",
    "moe": "E",
    "E": "E",
}


class HFConfigError(UsageError, ValueError):
    """A config.json field this library cannot map (names the field and what is supported)."""


def _field(hf: dict, model_type: str, key: str, default: Any = None, *, required: bool = False) -> Any:
    if key in hf and hf[key] is not None:
        return hf[key]
    if required:
        raise HFConfigError(f"config.json (model_type {model_type!r}) lacks the field {key!r}")
    return default


def _need(cond: bool, model_type: str, key: str, value: Any, supported: str) -> None:
    if not cond:
        raise HFConfigError(
            f"config.json field {key!r} = {value!r} (model_type {model_type!r}) is not supported: {supported}"
        )


def _check_act(hf: dict, model_type: str, key: str = "hidden_act", allowed=("silu",)) -> str:
    act = _field(hf, model_type, key, allowed[0])
    _need(act in allowed, model_type, key, act, f"only {' / '.join(allowed)}")
    return act


def _time_step_limit(hf: dict, model_type: str) -> list[float] | None:
    lim = _field(hf, model_type, "time_step_limit")
    if lim is None:
        return None
    _need(len(lim) == 2, model_type, "time_step_limit", lim, "a pair [low, high]")
    lo, hi = float(lim[0]), float(lim[1])
    return None if (lo, hi) == (0.0, math.inf) else [lo, hi]


def _rope(hf: dict, model_type: str) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) from rope_parameters (transformers 5) or the older flat fields."""
    params = dict(_field(hf, model_type, "rope_parameters", {}) or {})
    scaling = _field(hf, model_type, "rope_scaling")
    if isinstance(scaling, dict):
        params = {**scaling, **params}
    rope_type = params.get("rope_type", params.get("type", "default"))
    _need(
        rope_type == "default",
        model_type,
        "rope_parameters.rope_type",
        rope_type,
        "only 'default' RoPE (no scaling)",
    )
    theta = float(params.get("rope_theta", _field(hf, model_type, "rope_theta", 10000.0)))
    factor = float(params.get("partial_rotary_factor", _field(hf, model_type, "partial_rotary_factor", 1.0)))
    return theta, factor


def _common(hf: dict, model_type: str) -> dict[str, Any]:
    out = dict(
        vocab_size=int(_field(hf, model_type, "vocab_size", required=True)),
        d_model=int(_field(hf, model_type, "hidden_size", required=True)),
        tie_embeddings=bool(_field(hf, model_type, "tie_word_embeddings", False)),
        max_seq_len=int(_field(hf, model_type, "max_position_embeddings", 4096)),
    )
    eps = _field(hf, model_type, "rms_norm_eps", _field(hf, model_type, "layer_norm_epsilon", 1e-5))
    out["norm_eps"] = float(eps)
    return out


def _attention_fields(hf: dict, model_type: str) -> dict[str, Any]:
    heads = int(_field(hf, model_type, "num_attention_heads", required=True))
    kv = int(_field(hf, model_type, "num_key_value_heads", heads))
    head_dim = _field(hf, model_type, "head_dim")
    d = int(_field(hf, model_type, "hidden_size", required=True))
    return dict(n_heads=heads, n_kv_heads=kv, head_dim=int(head_dim) if head_dim else d // heads)


def _mamba2_fields(hf: dict, model_type: str, keys: dict[str, str]) -> dict[str, Any]:
    """Mamba-2 sizes; `keys` maps our field -> the HF field name used by this model_type."""
    d = int(_field(hf, model_type, "hidden_size", required=True))
    heads = int(_field(hf, model_type, keys["heads"], required=True))
    headdim = _field(hf, model_type, keys["headdim"])
    expand = _field(hf, model_type, keys["expand"])
    if headdim in (None, "auto"):
        _need(expand is not None, model_type, keys["headdim"], headdim, "a head size or an expand factor")
        headdim = int(expand) * d // heads
    headdim = int(headdim)
    d_inner = heads * headdim
    _need(
        d_inner % d == 0,
        model_type,
        keys["heads"],
        heads,
        f"heads x head_dim = {d_inner} must be a multiple of hidden_size {d} (expand is an integer here)",
    )
    if expand is not None:
        _need(
            int(expand) * d == d_inner,
            model_type,
            keys["expand"],
            expand,
            f"expand x hidden_size must equal heads x head_dim = {d_inner}",
        )
    out = dict(
        expand=d_inner // d,
        headdim=headdim,
        d_state=int(_field(hf, model_type, keys["d_state"], required=True)),
        ngroups=int(_field(hf, model_type, keys["ngroups"], 1)),
        d_conv=int(_field(hf, model_type, keys["d_conv"], 4)),
        chunk_size=int(_field(hf, model_type, keys["chunk"], 256)),
        ssm_bias=bool(_field(hf, model_type, keys["bias"], False)),
        ssm_conv_bias=bool(_field(hf, model_type, keys["conv_bias"], True)),
        time_step_limit=_time_step_limit(hf, model_type),
    )
    return out


# ---- config.json -> ModelConfig, per model_type -------------------------------------------------------
def _from_mamba2(hf: dict) -> dict[str, Any]:
    mt = "mamba2"
    _check_act(hf, mt)
    n = int(_field(hf, mt, "num_hidden_layers", required=True))
    keys = dict(
        heads="num_heads",
        headdim="head_dim",
        expand="expand",
        d_state="state_size",
        ngroups="n_groups",
        d_conv="conv_kernel",
        chunk="chunk_size",
        bias="use_bias",
        conv_bias="use_conv_bias",
    )
    return dict(pattern="M" * n, **_mamba2_fields(hf, mt, keys))


def _from_mamba(hf: dict) -> dict[str, Any]:
    mt = "mamba"
    _check_act(hf, mt)
    n = int(_field(hf, mt, "num_hidden_layers", required=True))
    d = int(_field(hf, mt, "hidden_size", required=True))
    inner = int(_field(hf, mt, "intermediate_size", int(_field(hf, mt, "expand", 2)) * d))
    _need(inner % d == 0, mt, "intermediate_size", inner, f"a multiple of hidden_size {d}")
    rank = _field(hf, mt, "time_step_rank", "auto")
    return dict(
        pattern="S" * n,
        m1_d_state=int(_field(hf, mt, "state_size", 16)),
        m1_expand=inner // d,
        m1_d_conv=int(_field(hf, mt, "conv_kernel", 4)),
        m1_dt_rank=math.ceil(d / 16) if rank == "auto" else int(rank),
        ssm_bias=bool(_field(hf, mt, "use_bias", False)),
        ssm_conv_bias=bool(_field(hf, mt, "use_conv_bias", True)),
    )


def _nemotron_pattern(hf: dict) -> str:
    mt = "nemotron_h"
    kinds = _field(hf, mt, "layers_block_type")
    if kinds is None:
        kinds = list(_field(hf, mt, "hybrid_override_pattern", required=True))
    out = []
    for i, k in enumerate(kinds):
        _need(k in NEMOTRON_KINDS, mt, f"layers_block_type[{i}]", k, f"one of {sorted(set(NEMOTRON_KINDS))}")
        out.append(NEMOTRON_KINDS[k])
    return "".join(out)


def _nemotron_moe(hf: dict) -> dict[str, Any]:
    """NemotronH's MoE (`layers.SigmoidMoE`): sigmoid router, grouped top-k, a shared expert."""
    mt = "nemotron_h"
    latent = _field(hf, mt, "moe_latent_size")
    _need(latent is None, mt, "moe_latent_size", latent, "only null (experts on the full hidden size)")
    return dict(
        moe_router="sigmoid",
        n_experts=int(_field(hf, mt, "n_routed_experts", required=True)),
        top_k=int(_field(hf, mt, "num_experts_per_tok", required=True)),
        d_ff_expert=int(_field(hf, mt, "moe_intermediate_size", required=True)),
        moe_shared_ff=int(_field(hf, mt, "moe_shared_expert_intermediate_size", 0)),
        moe_n_groups=int(_field(hf, mt, "n_group", 1)),
        moe_topk_groups=int(_field(hf, mt, "topk_group", 1)),
        moe_renormalize=bool(_field(hf, mt, "norm_topk_prob", True)),
        moe_scale=float(_field(hf, mt, "routed_scaling_factor", 1.0)),
    )


def _from_nemotron_h(hf: dict) -> dict[str, Any]:
    mt = "nemotron_h"
    _check_act(hf, mt, "mamba_hidden_act")
    act = _check_act(hf, mt, "mlp_hidden_act", ("relu2", "gelu"))
    keys = dict(
        heads="mamba_num_heads",
        headdim="mamba_head_dim",
        expand="expand",
        d_state="ssm_state_size",
        ngroups="n_groups",
        d_conv="conv_kernel",
        chunk="chunk_size",
        bias="use_bias",
        conv_bias="use_conv_bias",
    )
    m2 = _mamba2_fields(hf, mt, {**keys, "expand": "_no_expand_field"})
    pattern = _nemotron_pattern(hf)
    return dict(
        pattern=pattern,
        **(_nemotron_moe(hf) if "E" in pattern else {}),
        rope=False,
        mlp_act=act,
        d_ff=int(_field(hf, mt, "intermediate_size", required=True)),
        mlp_bias=bool(_field(hf, mt, "mlp_bias", False)),
        **_attention_fields(hf, mt),
        **m2,
    )


def _periodic(n: int, period: int, offset: int) -> list[bool]:
    return [i % period == offset for i in range(n)]


def _from_jamba(hf: dict) -> dict[str, Any]:
    mt = "jamba"
    _check_act(hf, mt)
    n = int(_field(hf, mt, "num_hidden_layers", required=True))
    d = int(_field(hf, mt, "hidden_size", required=True))
    attn = _periodic(
        n, int(_field(hf, mt, "attn_layer_period", 8)), int(_field(hf, mt, "attn_layer_offset", 4))
    )
    n_exp = int(_field(hf, mt, "num_experts", 16))
    moe = _periodic(
        n, int(_field(hf, mt, "expert_layer_period", 2)), int(_field(hf, mt, "expert_layer_offset", 1))
    )
    pattern = "".join(("*" if a else "S") + ("E" if m and n_exp > 1 else "-") for a, m in zip(attn, moe))
    rank = _field(hf, mt, "mamba_dt_rank", "auto")
    d_ff = int(_field(hf, mt, "intermediate_size", required=True))
    out = dict(
        pattern=pattern,
        rope=False,
        mlp_act="swiglu",
        d_ff=d_ff,
        d_ff_expert=d_ff,
        n_experts=max(n_exp, 1),
        top_k=min(int(_field(hf, mt, "num_experts_per_tok", 2)), max(n_exp, 1)),
        aux_loss_coef=float(_field(hf, mt, "router_aux_loss_coef", 0.001)),
        m1_d_state=int(_field(hf, mt, "mamba_d_state", 16)),
        m1_d_conv=int(_field(hf, mt, "mamba_d_conv", 4)),
        m1_expand=int(_field(hf, mt, "mamba_expand", 2)),
        m1_dt_rank=math.ceil(d / 16) if rank == "auto" else int(rank),
        ssm_bias=bool(_field(hf, mt, "mamba_proj_bias", False)),
        ssm_conv_bias=bool(_field(hf, mt, "mamba_conv_bias", True)),
        m1_inner_layernorms=True,
        moe_renormalize=False,
        **_attention_fields(hf, mt),
    )
    return out


def _from_bamba(hf: dict) -> dict[str, Any]:
    mt = "bamba"
    _check_act(hf, mt)
    n = int(_field(hf, mt, "num_hidden_layers", required=True))
    attn = set(_field(hf, mt, "attn_layer_indices", []) or [])
    theta, factor = _rope(hf, mt)
    bias = bool(_field(hf, mt, "attention_bias", False))
    keys = dict(
        heads="mamba_n_heads",
        headdim="mamba_d_head",
        expand="mamba_expand",
        d_state="mamba_d_state",
        ngroups="mamba_n_groups",
        d_conv="mamba_d_conv",
        chunk="mamba_chunk_size",
        bias="mamba_proj_bias",
        conv_bias="mamba_conv_bias",
    )
    return dict(
        pattern="".join(("*" if i in attn else "M") + "-" for i in range(n)),
        rope=True,
        rope_theta=theta,
        partial_rotary_factor=factor,
        attn_qkv_bias=bias,
        attn_out_bias=bias,
        mlp_act="swiglu",
        d_ff=int(_field(hf, mt, "intermediate_size", required=True)),
        mlp_bias=bool(_field(hf, mt, "mlp_bias", False)),
        **_attention_fields(hf, mt),
        **_mamba2_fields(hf, mt, keys),
    )


def _from_llama(hf: dict, model_type: str = "llama") -> dict[str, Any]:
    mt = model_type
    _check_act(hf, mt)
    n = int(_field(hf, mt, "num_hidden_layers", required=True))
    theta, factor = _rope(hf, mt)
    if mt == "qwen2":
        _need(
            not _field(hf, mt, "use_sliding_window", False),
            mt,
            "use_sliding_window",
            True,
            "only full attention (use_sliding_window=false)",
        )
        qkv_bias, out_bias = True, False
    elif mt == "mistral":
        window = _field(hf, mt, "sliding_window")
        _need(window is None, mt, "sliding_window", window, "only full attention (sliding_window=null)")
        qkv_bias = out_bias = False
    else:
        qkv_bias = out_bias = bool(_field(hf, mt, "attention_bias", False))
    return dict(
        pattern="*-" * n,
        rope=True,
        rope_theta=theta,
        partial_rotary_factor=factor,
        attn_qkv_bias=qkv_bias,
        attn_out_bias=out_bias,
        mlp_act="swiglu",
        d_ff=int(_field(hf, mt, "intermediate_size", required=True)),
        mlp_bias=bool(_field(hf, mt, "mlp_bias", False)),
        **_attention_fields(hf, mt),
    )


_FROM_HF: dict[str, Callable[[dict], dict[str, Any]]] = {
    "mamba2": _from_mamba2,
    "mamba": _from_mamba,
    "nemotron_h": _from_nemotron_h,
    "jamba": _from_jamba,
    "bamba": _from_bamba,
    "llama": _from_llama,
    "qwen2": lambda hf: _from_llama(hf, "qwen2"),
    "mistral": lambda hf: _from_llama(hf, "mistral"),
}


def check_model_type(model_type: Any) -> str:
    if model_type in _FROM_HF:
        return model_type
    why = f" ({UNSUPPORTED[model_type]})" if model_type in UNSUPPORTED else ""
    raise HFConfigError(
        f"config.json model_type {model_type!r} is not supported{why}; supported model_types: "
        f"{', '.join(SUPPORTED)}"
    )


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """An HF config.json (as a dict) -> ModelConfig computing the same function."""
    model_type = check_model_type(hf.get("model_type"))
    fields = {**_common(hf, model_type), **_FROM_HF[model_type](hf)}
    try:
        return ModelConfig(**fields)
    except ValueError as err:
        raise HFConfigError(
            f"config.json (model_type {model_type!r}) maps to an invalid config: {err}"
        ) from None


# ---- tensor names --------------------------------------------------------------------------------------
def _globals(model_type: str) -> list[tuple[str, str]]:
    if model_type in ("mamba2", "mamba", "nemotron_h"):
        return [("backbone.embeddings.", "embed."), ("backbone.norm_f.", "norm.")]
    final = "model.final_layernorm." if model_type in ("jamba", "bamba") else "model.norm."
    return [("model.embed_tokens.", "embed."), (final, "norm.")]


def name_pairs(config: ModelConfig, model_type: str) -> list[tuple[str, str]]:
    """(HF prefix, our prefix) for every tensor group of `config` written as `model_type`."""
    kinds = config.layer_kinds
    pairs = _globals(model_type) + [("lm_head.", "lm_head.")]
    if model_type in ("mamba2", "mamba", "nemotron_h"):
        for i in range(len(kinds)):
            pairs += [
                (f"backbone.layers.{i}.norm.", f"blocks.{i}.norm."),
                (f"backbone.layers.{i}.mixer.", f"blocks.{i}.mixer."),
            ]
        return pairs
    paired = {
        "jamba": ("pre_ff_layernorm", "feed_forward"),
        "bamba": ("pre_ff_layernorm", "feed_forward"),
        "llama": ("post_attention_layernorm", "mlp"),
        "qwen2": ("post_attention_layernorm", "mlp"),
        "mistral": ("post_attention_layernorm", "mlp"),
    }
    ff_norm, ff_name = paired[model_type]
    for j in range(len(kinds) // 2):
        mixer = "self_attn" if kinds[2 * j] == "attention" else "mamba"
        pairs += [
            (f"model.layers.{j}.input_layernorm.", f"blocks.{2 * j}.norm."),
            (f"model.layers.{j}.{mixer}.", f"blocks.{2 * j}.mixer."),
            (f"model.layers.{j}.{ff_norm}.", f"blocks.{2 * j + 1}.norm."),
            (f"model.layers.{j}.{ff_name}.", f"blocks.{2 * j + 1}.mixer."),
        ]
    return pairs


def _rename(name: str, pairs: list[tuple[str, str]]) -> str | None:
    best = None
    for src, dst in pairs:
        if name.startswith(src) and (best is None or len(src) > len(best[0])):
            best = (src, dst)
    return None if best is None else best[1] + name[len(best[0]) :]


def _split_fused_experts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """experts.gate_up_proj (E, 2I, D), experts.down_proj (E, D, I) -> experts.e.{gate,up,down}_proj.weight"""
    out = {}
    for name, t in tensors.items():
        head, _, last = name.rpartition(".experts.")
        if last == "up_proj" and t.dim() == 3:  # NemotronH: experts without a gate
            for e in range(t.shape[0]):
                out[f"{head}.experts.{e}.up_proj.weight"] = t[e]
        elif last == "gate_up_proj" and t.dim() == 3:
            gate, up = t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                out[f"{head}.experts.{e}.gate_proj.weight"] = gate[e]
                out[f"{head}.experts.{e}.up_proj.weight"] = up[e]
        elif last == "down_proj" and t.dim() == 3:
            for e in range(t.shape[0]):
                out[f"{head}.experts.{e}.down_proj.weight"] = t[e]
        else:
            out[name] = t
    return out


def tensors_from_hf(model, model_type: str, tensors: dict[str, torch.Tensor], *, source: str) -> dict:
    """HF-named tensors -> this model's state-dict names; every mismatch listed with HF's name."""
    tensors = _split_fused_experts(tensors)
    pairs = name_pairs(model.config, model_type)
    expected = dict(model.state_dict())
    tied = model.config.tie_embeddings
    if tied:
        expected.pop("lm_head.weight", None)
    ours_to_hf = {dst: src for src, dst in pairs}
    out, problems = {}, []
    for name, t in tensors.items():
        ours = _rename(name, pairs)
        if ours == "lm_head.weight" and tied:
            continue  # the tied copy of the embedding
        if ours is None or ours not in expected:
            problems.append(
                f"unexpected tensor {name!r} of shape {tuple(t.shape)} (config.json describes no "
                "such parameter)"
            )
            continue
        if tuple(t.shape) != tuple(expected[ours].shape):
            problems.append(
                f"tensor {name!r} has shape {tuple(t.shape)} but config.json implies "
                f"{tuple(expected[ours].shape)}"
            )
            continue
        out[ours] = t
    for ours in sorted(set(expected) - set(out)):
        if any(p.startswith(f"tensor {_to_hf_name(ours, ours_to_hf)!r}") for p in problems):
            continue
        problems.append(
            f"missing tensor {_to_hf_name(ours, ours_to_hf)!r} (config.json implies shape "
            f"{tuple(expected[ours].shape)})"
        )
    if problems:
        raise ValueError(
            f"{source} does not match its config.json (model_type {model_type!r}):\n  "
            + "\n  ".join(problems)
        )
    return out


def _to_hf_name(ours: str, ours_to_hf: dict[str, str]) -> str:
    return _rename(ours, [(dst, src) for dst, src in ours_to_hf.items()]) or ours


def tensors_to_hf(model, model_type: str) -> dict[str, torch.Tensor]:
    """Our state dict under HF's names. A tied LM head is written too (a copy): not every HF class ties
    it on load (NemotronH does not), and a class that does loads the same values."""
    pairs = [(dst, src) for src, dst in name_pairs(model.config, model_type)]
    state = model.state_dict()
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["lm_head.weight"].clone()  # safetensors refuses shared storage
    out = {}
    for name, t in state.items():
        hf_name = _rename(name, pairs)
        if hf_name is None:
            raise ValueError(f"save_pretrained(format='hf'): no {model_type} name for tensor {name!r}")
        out[hf_name] = t
    return out


# ---- ModelConfig -> config.json ------------------------------------------------------------------------
def _fits(config: ModelConfig, model_type: str) -> str | None:
    """None when `config` can be written as `model_type`, else why not."""
    c, p = config, config.pattern
    kinds = c.layer_kinds
    if "transmamba" in kinds:
        return "TransMamba (`T`) layers have no Hugging Face counterpart; keep the native format"
    pairs = [p[i : i + 2] for i in range(0, len(p), 2)] if len(p) % 2 == 0 else None
    plain_attn = not c.rope and not c.attn_qkv_bias and not c.attn_out_bias
    if model_type == "mamba2":
        return None if set(p) == {"M"} else "needs a pattern of 'M' only"
    if model_type == "mamba":
        if set(p) != {"S"}:
            return "needs a pattern of 'S' only"
        return "Mamba-1 inner layernorms are Jamba's (use jamba)" if c.m1_inner_layernorms else None
    if model_type == "nemotron_h":
        if not set(p) <= set("M*-E"):
            return "needs a pattern of 'M', '*', '-', 'E'"
        if ("-" in p or "E" in p) and c.mlp_act not in ("relu2", "gelu"):
            return "needs mlp_act relu2 or gelu"
        if "E" in p and (c.moe_router != "sigmoid" or c.moe_shared_ff <= 0):
            return "needs moe_router='sigmoid' with a shared expert (moe_shared_ff > 0) for 'E' layers"
        if "*" in p and not plain_attn:
            return "needs attention without RoPE and without biases"
        return None
    if pairs is None:
        return "needs (mixer, feed-forward) pairs"
    if model_type == "jamba":
        if any(a not in "S*" or b not in "-E" for a, b in pairs):
            return "needs ('S' or '*') + ('-' or 'E') pairs"
        if ("*" in p and not plain_attn) or c.mlp_act != "swiglu" or c.mlp_bias:
            return "needs attention without RoPE/biases and SwiGLU MLPs without biases"
        if "E" in p and c.moe_router != "softmax":
            return "needs the softmax router (moe_router='softmax')"
        if not c.m1_inner_layernorms or c.moe_renormalize or ("E" in p and c.expert_dim != c.ffn_dim):
            return "needs m1_inner_layernorms=True, moe_renormalize=False and d_ff_expert = d_ff"
        if _jamba_periods(p) is None:
            return "needs attention and expert layers at a fixed period/offset"
        return None
    if model_type == "bamba":
        if any(a not in "M*" or b != "-" for a, b in pairs) or c.mlp_act != "swiglu":
            return "needs ('M' or '*') + '-' pairs with SwiGLU MLPs"
        if "*" not in p:  # transformers' Bamba builds an attention mask from its first attention layer
            return "needs at least one attention layer (HF's Bamba cannot run without one)"
        if not c.rope or c.attn_qkv_bias != c.attn_out_bias:
            return "needs RoPE attention with all or no biases"
        return None
    if model_type in ("llama", "qwen2", "mistral"):
        if any(pr != "*-" for pr in pairs) or c.mlp_act != "swiglu" or not c.rope:
            return "needs '*-' pairs with RoPE and SwiGLU MLPs"
        if c.partial_rotary_factor != 1.0:
            return "needs full RoPE"
        if model_type == "qwen2" and (not c.attn_qkv_bias or c.attn_out_bias or c.mlp_bias):
            return "needs q/k/v biases only"
        if model_type == "llama" and c.attn_qkv_bias != c.attn_out_bias:
            return "needs all or no attention biases"
        if model_type == "mistral" and (c.attn_qkv_bias or c.attn_out_bias or c.mlp_bias):
            return "needs no biases"
        return None
    return f"unknown model_type {model_type!r}"


def _jamba_periods(pattern: str) -> tuple[int, int, int, int] | None:
    """(attn_period, attn_offset, expert_period, expert_offset) reproducing `pattern`, or None."""
    n = len(pattern) // 2
    attn = [pattern[2 * i] == "*" for i in range(n)]
    moe = [pattern[2 * i + 1] == "E" for i in range(n)]

    def find(flags: list[bool]) -> tuple[int, int] | None:
        if not any(flags):
            return (n + 1, n)  # never
        for period in range(1, n + 1):
            for off in range(period):
                if _periodic(n, period, off) == flags:
                    return (period, off)
        return None

    a, m = find(attn), find(moe)
    return None if a is None or m is None else (*a, *m)


def hf_model_type_for(config: ModelConfig) -> str:
    """The first of SUPPORTED that `config` can be written as (ValueError listing why not, per type)."""
    reasons = {}
    for mt in ("mamba2", "mamba", "llama", "qwen2", "bamba", "jamba", "nemotron_h"):
        why = _fits(config, mt)
        if why is None:
            return mt
        reasons[mt] = why
    if "transmamba" in config.layer_kinds:
        raise ValueError(f"save_pretrained(format='hf'): {_fits(config, 'mamba2')}")
    listed = "; ".join(f"{mt}: {why}" for mt, why in reasons.items())
    raise ValueError(
        f"save_pretrained(format='hf'): pattern {config.pattern!r} with these options fits no HF "
        f"architecture ({listed})"
    )


def config_to_hf(config: ModelConfig, model_type: str) -> dict[str, Any]:
    why = _fits(config, model_type)
    if why is not None:
        raise ValueError(f"save_pretrained(format='hf', model_type={model_type!r}): {why}")
    c, kinds = config, config.layer_kinds
    out: dict[str, Any] = dict(
        model_type=model_type,
        architectures=[ARCHITECTURES[model_type]],
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        tie_word_embeddings=c.tie_embeddings,
    )
    tsl = list(c.time_step_limit) if c.time_step_limit is not None else [0.0, math.inf]
    m2 = dict(
        state_size=c.d_state,
        n_groups=c.ngroups,
        conv_kernel=c.d_conv,
        chunk_size=c.chunk_size,
        use_bias=c.ssm_bias,
        use_conv_bias=c.ssm_conv_bias,
        time_step_limit=tsl,
    )
    attn = dict(
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.kv_heads,
        head_dim=c.attn_head_dim,
        max_position_embeddings=c.max_seq_len,
    )
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.partial_rotary_factor != 1.0:
        rope["partial_rotary_factor"] = c.partial_rotary_factor
    n_pairs = len(kinds) // 2
    if model_type == "mamba2":
        out.update(
            num_hidden_layers=len(kinds),
            num_heads=c.ssm_heads,
            head_dim=c.headdim,
            expand=c.expand,
            layer_norm_epsilon=c.norm_eps,
            **m2,
        )
    elif model_type == "mamba":
        out.update(
            num_hidden_layers=len(kinds),
            state_size=c.m1_d_state,
            expand=c.m1_expand,
            intermediate_size=c.m1_d_inner,
            conv_kernel=c.m1_d_conv,
            time_step_rank=c.m1_rank,
            use_bias=c.ssm_bias,
            use_conv_bias=c.ssm_conv_bias,
            layer_norm_epsilon=c.norm_eps,
        )
    elif model_type == "nemotron_h":
        names = {"mamba2": "mamba", "attention": "attention", "mlp": "mlp", "moe": "moe"}
        if "moe" in kinds:
            out.update(
                n_routed_experts=c.n_experts,
                num_experts_per_tok=c.top_k,
                moe_intermediate_size=c.expert_dim,
                moe_shared_expert_intermediate_size=c.moe_shared_ff,
                n_shared_experts=1,
                n_group=c.moe_n_groups,
                topk_group=c.moe_topk_groups,
                norm_topk_prob=c.moe_renormalize,
                routed_scaling_factor=c.moe_scale,
                moe_latent_size=None,
            )
        out.update(
            layers_block_type=[names[k] for k in kinds],
            num_hidden_layers=len(kinds),
            mamba_num_heads=c.ssm_heads,
            mamba_head_dim=c.headdim,
            ssm_state_size=c.d_state,
            n_groups=c.ngroups,
            conv_kernel=c.d_conv,
            chunk_size=c.chunk_size,
            use_bias=c.ssm_bias,
            use_conv_bias=c.ssm_conv_bias,
            time_step_limit=tsl,
            intermediate_size=c.ffn_dim,
            mlp_hidden_act=c.mlp_act,
            mlp_bias=c.mlp_bias,
            layer_norm_epsilon=c.norm_eps,
            residual_in_fp32=False,
            **attn,
        )
    elif model_type == "jamba":
        ap, ao, ep, eo = _jamba_periods(c.pattern)
        out.update(
            num_hidden_layers=n_pairs,
            attn_layer_period=ap,
            attn_layer_offset=ao,
            expert_layer_period=ep,
            expert_layer_offset=eo,
            num_experts=c.n_experts if "moe" in kinds else 1,
            num_experts_per_tok=c.top_k,
            intermediate_size=c.ffn_dim,
            mamba_d_state=c.m1_d_state,
            mamba_d_conv=c.m1_d_conv,
            mamba_expand=c.m1_expand,
            mamba_dt_rank=c.m1_rank,
            mamba_conv_bias=c.ssm_conv_bias,
            mamba_proj_bias=c.ssm_bias,
            rms_norm_eps=c.norm_eps,
            router_aux_loss_coef=c.aux_loss_coef,
            use_mamba_kernels=False,
            **{k: v for k, v in attn.items() if k != "head_dim"},
        )
    elif model_type == "bamba":
        out.update(
            num_hidden_layers=n_pairs,
            attn_layer_indices=[j for j in range(n_pairs) if kinds[2 * j] == "attention"],
            mamba_n_heads=c.ssm_heads,
            mamba_d_head=c.headdim,
            mamba_n_groups=c.ngroups,
            mamba_d_state=c.d_state,
            mamba_d_conv=c.d_conv,
            mamba_expand=c.expand,
            mamba_chunk_size=c.chunk_size,
            mamba_conv_bias=c.ssm_conv_bias,
            mamba_proj_bias=c.ssm_bias,
            time_step_limit=tsl,
            intermediate_size=c.ffn_dim,
            rms_norm_eps=c.norm_eps,
            attention_bias=c.attn_qkv_bias,
            mlp_bias=c.mlp_bias,
            rope_parameters=rope,
            **attn,
        )
    else:  # llama / qwen2 / mistral
        out.update(
            num_hidden_layers=n_pairs,
            intermediate_size=c.ffn_dim,
            rms_norm_eps=c.norm_eps,
            rope_parameters=rope,
            mlp_bias=c.mlp_bias,
            **attn,
        )
        if model_type == "llama":
            out["attention_bias"] = c.attn_qkv_bias
        if model_type == "mistral":
            out["sliding_window"] = None
            del out["mlp_bias"]
    if model_type == "jamba" and c.attn_head_dim != c.d_model // c.n_heads:
        raise ValueError(
            "save_pretrained(format='hf', model_type='jamba'): Jamba's head_dim is "
            "hidden_size / num_attention_heads"
        )
    return out


# ---- directories ---------------------------------------------------------------------------------------
def load_hf(directory: str | Path, dtype: torch.dtype | None = None):
    """A CausalLM from an HF transformers directory (config.json + weights), in `dtype` (default: the
    checkpoint's)."""
    from transmamba.interop import empty_model, fill_model

    directory = Path(directory)
    hf_config = files.read_json(directory / "config.json")
    model = empty_model(config_from_hf(hf_config))
    tensors = files.read_tensors(directory)
    ours = tensors_from_hf(model, hf_config["model_type"], tensors, source=str(directory))
    return fill_model(model, ours, dtype)


def save_hf(model, directory: str | Path, model_type: str | None = None) -> Path:
    """Write `model` as an HF transformers directory (config.json + model.safetensors), atomically."""
    config = model.config
    if model_type is None:
        model_type = hf_model_type_for(config)
    elif model_type not in SUPPORTED:
        raise ValueError(f"save_pretrained: model_type {model_type!r} is not one of {', '.join(SUPPORTED)}")
    hf_config = config_to_hf(config, model_type)
    tensors = tensors_to_hf(model, model_type)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files.write_tensors(out / files.SAFE_SINGLE, tensors)
    files.write_json(out / "config.json", hf_config)
    return out
