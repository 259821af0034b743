"""Checkpoints of other libraries in and out.

    detect_format(directory) -> "native" | "hf" | "mamba_ssm"
    load_pretrained(directory) -> CausalLM          any of the three (what `CausalLM.from_pretrained` calls)
    hf.save_hf(model, directory, model_type=None)   an HF transformers directory

`hf` maps HF transformers' hybrid formats (mamba2, mamba, nemotron_h, jamba, bamba, llama, qwen2);
`mamba_ssm` maps mamba_ssm's MambaLMHeadModel directories; `files` reads config.json and weight files
(safetensors, sharded or not; `.bin` only through torch.load(weights_only=True)). Optional packages
(transformers, lm_eval) are never imported here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from transmamba.interop import files

FORMATS = ("native", "hf", "mamba_ssm")


def detect_format(directory: str | Path) -> str:
    """Which kind of checkpoint directory this is, from its config.json."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"from_pretrained: {cfg_path} not found")
    data = files.read_json(cfg_path)
    if "pattern" in data and "model_type" not in data:
        return "native"
    if "model_type" in data:
        return "hf"
    if "d_model" in data and "n_layer" in data:
        return "mamba_ssm"
    from transmamba.errors import MismatchError

    raise MismatchError(
        f"{cfg_path}: not a transmamba, HF transformers or mamba_ssm config (expected a 'pattern', "
        "'model_type' or 'd_model' + 'n_layer' field)"
    )


def load_pretrained(directory: str | Path, dtype: torch.dtype | None = None):
    """A CausalLM from an HF transformers or mamba_ssm directory, on the CPU, in `dtype` (default: the
    checkpoint's own, that of its embedding matrix, as HF's dtype="auto")."""
    fmt = detect_format(directory)
    if fmt == "hf":
        from transmamba.interop.hf import load_hf

        return load_hf(directory, dtype=dtype)
    if fmt == "mamba_ssm":
        from transmamba.interop.mamba_ssm import load_mamba_ssm

        return load_mamba_ssm(directory, dtype=dtype)
    raise ValueError("load_pretrained: native directories load through CausalLM.from_pretrained")


def empty_model(config):
    """CausalLM(config) on the meta device: shapes only, no memory and no random init (a 52B model is
    built instantly); `fill_model` then puts the checkpoint's tensors in."""
    from transmamba.models.lm import CausalLM

    with torch.device("meta"):
        return CausalLM(config)


def fill_model(model, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None):
    """Give the meta-device `model` the checked tensors (our names) and cast it to one dtype."""
    model.load_state_dict({k: v.contiguous() for k, v in tensors.items()}, strict=False, assign=True)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # tensors_from_* lists missing tensors first; this is a guard
        raise ValueError(f"checkpoint left tensors unset: {left[:5]}")
    return model.to(dtype or model.embed.weight.dtype)
