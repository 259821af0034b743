"""mamba_ssm checkpoints (`MambaLMHeadModel` directories: config.json + weights) -> `CausalLM`.

config.json holds mamba_ssm's `MambaConfig`: d_model, n_layer, vocab_size, ssm_cfg ({"layer": "Mamba1" (the
default) or "Mamba2", sizes}), d_intermediate (a gated MLP after every mixer when > 0), attn_layer_idx and
attn_cfg (multi-head attention at those layers), rms_norm, pad_vocab_size_multiple, tie_embeddings.

Layer i becomes pattern character 'S' (Mamba1), 'M' (Mamba2) or '*' (attention), followed by '-' when
d_intermediate > 0. Tensors:

    backbone.embedding.weight          -> embed.weight          backbone.norm_f.weight -> norm.weight
    backbone.layers.i.norm / .mixer.*  -> blocks.b.norm / .mixer.*  (the Mamba mixers' names are the same)
    mixer.in_proj (attention)          -> q_proj | k_proj | v_proj  (rows split nheads·hd | kv·hd | kv·hd)
    mixer.out_proj (attention)         -> o_proj
    backbone.layers.i.norm2            -> blocks.b+1.norm
    mlp.fc1 (2I, D)                    -> up_proj = rows [:I], gate_proj = rows [I:]
    mlp.fc2                            -> down_proj (GatedMLP: y, gate = fc1(x).chunk(2); fc2(y * silu(gate)))

The gated MLP's width is d_intermediate rounded up to a multiple of 128 (mamba_ssm's GatedMLP). Weights come
from safetensors or from pytorch_model.bin through torch.load(weights_only=True) only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from transmamba.errors import UsageError
from transmamba.interop import files
from transmamba.models.config import ModelConfig

MLP_MULTIPLE = 128  # mamba_ssm's GatedMLP rounds its hidden width up to this


class MambaSSMConfigError(UsageError, ValueError):
    """A mamba_ssm config field this library cannot map."""


def _need(cond: bool, key: str, value: Any, supported: str) -> None:
    if not cond:
        raise MambaSSMConfigError(
            f"mamba_ssm config.json field {key!r} = {value!r} is not supported: {supported}"
        )


def config_from_mamba_ssm(cfg: dict[str, Any]) -> ModelConfig:
    for key in ("d_model", "n_layer", "vocab_size"):
        if key not in cfg:
            raise MambaSSMConfigError(f"mamba_ssm config.json lacks the field {key!r}")
    d, n = int(cfg["d_model"]), int(cfg["n_layer"])
    ssm = dict(cfg.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    _need(layer in ("Mamba1", "Mamba2"), "ssm_cfg.layer", layer, "Mamba1 or Mamba2")
    _need(cfg.get("rms_norm", True), "rms_norm", cfg.get("rms_norm"), "only RMSNorm (rms_norm=true)")
    attn_idx = set(cfg.get("attn_layer_idx") or [])
    attn = dict(cfg.get("attn_cfg") or {})
    d_int = int(cfg.get("d_intermediate", 0) or 0)
    mult = int(cfg.get("pad_vocab_size_multiple", 8) or 1)
    vocab = math.ceil(int(cfg["vocab_size"]) / mult) * mult
    mixer = "M" if layer == "Mamba2" else "S"
    pattern = "".join(("*" if i in attn_idx else mixer) + ("-" if d_int > 0 else "") for i in range(n))
    fields: dict[str, Any] = dict(
        vocab_size=vocab,
        d_model=d,
        pattern=pattern,
        tie_embeddings=bool(cfg.get("tie_embeddings", True)),
        norm_eps=1e-5,
    )
    if layer == "Mamba2":
        for key, ok in (("norm_before_gate", False), ("D_has_hdim", False), ("rmsnorm", True)):
            _need(ssm.get(key, ok) == ok, f"ssm_cfg.{key}", ssm.get(key), f"only {ok}")
        expand = ssm.get("expand", 2)
        _need(
            ssm.get("d_ssm") in (None, expand * d),
            "ssm_cfg.d_ssm",
            ssm.get("d_ssm"),
            "only the full width (d_ssm = expand * d_model or null)",
        )
        lim = ssm.get("dt_limit")
        limit = (
            None if lim is None or (float(lim[0]), float(lim[1])) == (0.0, math.inf) else [*map(float, lim)]
        )
        fields.update(
            d_state=int(ssm.get("d_state", 128)),
            d_conv=int(ssm.get("d_conv", 4)),
            expand=int(expand),
            headdim=int(ssm.get("headdim", 64)),
            ngroups=int(ssm.get("ngroups", 1)),
            chunk_size=int(ssm.get("chunk_size", 256)),
            time_step_limit=limit,
        )
    else:
        rank = ssm.get("dt_rank", "auto")
        fields.update(
            m1_d_state=int(ssm.get("d_state", 16)),
            m1_d_conv=int(ssm.get("d_conv", 4)),
            m1_expand=int(ssm.get("expand", 2)),
            m1_dt_rank=math.ceil(d / 16) if rank == "auto" else int(rank),
        )
    fields.update(ssm_bias=bool(ssm.get("bias", False)), ssm_conv_bias=bool(ssm.get("conv_bias", True)))
    if attn_idx:
        _need(int(attn.get("d_conv", 0) or 0) == 0, "attn_cfg.d_conv", attn.get("d_conv"), "only 0 (no conv)")
        _need(
            int(attn.get("mlp_dim", 0) or 0) == 0,
            "attn_cfg.mlp_dim",
            attn.get("mlp_dim"),
            "only 0 (no MLP inside attention)",
        )
        _need(
            not attn.get("rotary_emb_interleaved", False),
            "attn_cfg.rotary_emb_interleaved",
            True,
            "only the non-interleaved (rotate-half) RoPE",
        )
        _need(
            attn.get("softmax_scale") is None,
            "attn_cfg.softmax_scale",
            attn.get("softmax_scale"),
            "only the default 1/sqrt(head_dim)",
        )
        heads = int(attn.get("num_heads", 0) or 0)
        _need(heads > 0, "attn_cfg.num_heads", attn.get("num_heads"), "a positive int")
        head_dim = int(attn.get("head_dim") or d // heads)
        rot = int(attn.get("rotary_emb_dim", 0) or 0)
        fields.update(
            n_heads=heads,
            n_kv_heads=int(attn.get("num_heads_kv") or heads),
            head_dim=head_dim,
            rope=rot > 0,
            partial_rotary_factor=rot / head_dim if rot > 0 else 1.0,
            rope_theta=float(attn.get("rotary_emb_base", 10000.0)),
            attn_qkv_bias=bool(attn.get("qkv_proj_bias", True)),
            attn_out_bias=bool(attn.get("out_proj_bias", True)),
        )
    if d_int > 0:
        fields.update(mlp_act="swiglu", d_ff=math.ceil(d_int / MLP_MULTIPLE) * MLP_MULTIPLE, mlp_bias=False)
    try:
        return ModelConfig(**fields)
    except ValueError as err:
        raise MambaSSMConfigError(f"mamba_ssm config.json maps to an invalid config: {err}") from None


def tensors_from_mamba_ssm(
    model, tensors: dict[str, torch.Tensor], *, source: str
) -> dict[str, torch.Tensor]:
    """mamba_ssm-named tensors -> this model's state dict (fused q|k|v and fc1 split); mismatches listed."""
    cfg = model.config
    kinds = cfg.layer_kinds
    step = 2 if "mlp" in kinds else 1
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for name, t in tensors.items():
        if name == "backbone.embedding.weight":
            out["embed.weight"] = t
        elif name == "backbone.norm_f.weight":
            out["norm.weight"] = t
        elif name == "lm_head.weight":
            if not cfg.tie_embeddings:
                out["lm_head.weight"] = t
        elif name.startswith("backbone.layers."):
            idx, _, rest = name[len("backbone.layers.") :].partition(".")
            if not idx.isdigit() or int(idx) * step >= len(kinds):
                problems.append(f"unexpected tensor {name!r} (config.json has n_layer={len(kinds) // step})")
                continue
            b = int(idx) * step
            if rest.startswith("norm2."):
                out[f"blocks.{b + 1}.norm.{rest[len('norm2.') :]}"] = t
            elif rest.startswith("norm."):
                out[f"blocks.{b}.{rest}"] = t
            elif rest.startswith("mlp.fc1."):
                up, gate = t.chunk(2, dim=0)
                leaf = rest[len("mlp.fc1.") :]
                out[f"blocks.{b + 1}.mixer.up_proj.{leaf}"] = up
                out[f"blocks.{b + 1}.mixer.gate_proj.{leaf}"] = gate
            elif rest.startswith("mlp.fc2."):
                out[f"blocks.{b + 1}.mixer.down_proj.{rest[len('mlp.fc2.') :]}"] = t
            elif kinds[b] == "attention" and rest.startswith("mixer.in_proj."):
                q = cfg.n_heads * cfg.attn_head_dim
                kv = cfg.kv_heads * cfg.attn_head_dim
                if t.shape[0] != q + 2 * kv:
                    problems.append(
                        f"tensor {name!r} has {t.shape[0]} rows but attn_cfg implies "
                        f"{q} + 2 x {kv} = {q + 2 * kv} (q | k | v)"
                    )
                    continue
                leaf = rest[len("mixer.in_proj.") :]
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), torch.split(t, [q, kv, kv], dim=0)):
                    out[f"blocks.{b}.mixer.{proj}.{leaf}"] = part
            elif kinds[b] == "attention" and rest.startswith("mixer.out_proj."):
                out[f"blocks.{b}.mixer.o_proj.{rest[len('mixer.out_proj.') :]}"] = t
            else:
                out[f"blocks.{b}.{rest}"] = t
        else:
            problems.append(f"unexpected tensor {name!r}")
    expected = dict(model.state_dict())
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    for k in sorted(set(out) - set(expected)):
        problems.append(
            f"unexpected tensor (as {k!r}) of shape {tuple(out[k].shape)}: config.json describes "
            "no such parameter"
        )
    for k in sorted(set(expected) - set(out)):
        problems.append(f"missing tensor for {k!r} (config.json implies shape {tuple(expected[k].shape)})")
    for k in sorted(set(out) & set(expected)):
        if tuple(out[k].shape) != tuple(expected[k].shape):
            problems.append(
                f"tensor for {k!r} has shape {tuple(out[k].shape)} but config.json implies "
                f"{tuple(expected[k].shape)}"
            )
    if problems:
        raise ValueError(f"{source} does not match its mamba_ssm config.json:\n  " + "\n  ".join(problems))
    return out


def load_mamba_ssm(directory: str | Path, dtype: torch.dtype | None = None):
    """A CausalLM from a mamba_ssm directory, in `dtype` (default: the checkpoint's)."""
    from transmamba.interop import empty_model, fill_model

    directory = Path(directory)
    model = empty_model(config_from_mamba_ssm(files.read_json(directory / "config.json")))
    ours = tensors_from_mamba_ssm(model, files.read_tensors(directory), source=str(directory))
    return fill_model(model, ours, dtype)
