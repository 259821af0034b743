"""Find and load a Transformer teacher: a run folder or checkpoint folder written here, or an HF
Llama/Qwen2/Mistral directory (read by `transmamba.interop.hf`).
Returns the model (fp32, eval mode) and the path of its tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from transmamba.conversion.to_transmamba import ConversionError

TEACHER_TYPES = ("llama", "qwen2", "mistral")  # HF model types whose layers are all attention + MLP


def checkpoint_folder(path: str | Path) -> Path:
    """A folder holding config.json: `path` itself, or the `last` checkpoint of a run folder."""
    from transmamba.training.checkpoint import find_checkpoint

    p = Path(path)
    if (p / "config.json").is_file():
        return p
    if p.is_dir():
        found = find_checkpoint(p)
        if found is not None:
            return found
    raise ConversionError(f"{path}: neither a checkpoint folder (config.json + weights) nor a run folder "
                          "with a checkpoint (looked for <run>/last)")


def load_teacher(path: str | Path):
    """(model, tokenizer_path or None) for a library or HF Llama/Qwen2/Mistral checkpoint."""
    from transmamba.models.lm import CausalLM

    folder = checkpoint_folder(path)
    cfg = json.loads((folder / "config.json").read_text())
    if "model_type" in cfg:  # an HF transformers directory
        from transmamba.interop.hf import load_hf

        if cfg["model_type"] not in TEACHER_TYPES:
            raise ConversionError(f"{folder}: model_type {cfg['model_type']!r} is not a Transformer teacher; "
                                  f"supported: {', '.join(TEACHER_TYPES)}")
        model = load_hf(folder, dtype=torch.float32).eval()
    else:
        model = CausalLM.from_pretrained(folder).eval()
    tok = folder / "tokenizer.json"
    return model, (tok if tok.is_file() else None)
