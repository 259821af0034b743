"""Find and load a Transformer teacher: a run folder or checkpoint folder written here, or an HF
Llama/Mistral directory. Returns the model (fp32, eval mode) and the path of its tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

from transmamba.conversion.to_transmamba import ConversionError


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
    """(model, tokenizer_path or None) for a library or HF Llama/Mistral checkpoint."""
    from transmamba.models.lm import CausalLM

    folder = checkpoint_folder(path)
    cfg = json.loads((folder / "config.json").read_text())
    if "model_type" in cfg:  # an HF transformers directory
        from transmamba.conversion.hf_llama import load_hf_llama

        model = load_hf_llama(folder)
    else:
        model = CausalLM.from_pretrained(folder).eval()
    tok = folder / "tokenizer.json"
    return model, (tok if tok.is_file() else None)
