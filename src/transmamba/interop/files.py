"""Reading and writing checkpoint directories of other libraries: config.json and weight files.

    read_json(path)               config.json -> dict (HF's {"__float__": "Infinity"} encoding decoded)
    read_tensors(directory)       every tensor of the directory's weights -> dict name -> tensor
    write_json / write_tensors    atomic writes (temporary file + os.replace)

Weights are looked up in this order: model.safetensors, model.safetensors.index.json (shards listed in its
`weight_map`), pytorch_model.bin, pytorch_model.bin.index.json. Safetensors never run code; a `.bin` file is a
pickle and is read only through `torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_SINGLE, SAFE_INDEX, BIN_SINGLE, BIN_INDEX)


def _decode_floats(obj: Any) -> Any:
    """HF transformers writes inf / nan as {"__float__": "Infinity"}; turn those back into floats."""
    if isinstance(obj, dict):
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _decode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_floats(v) for v in obj]
    return obj


def _encode_floats(obj: Any) -> Any:
    """The inverse of `_decode_floats`, so the JSON stays strict (no bare Infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": "Infinity" if obj > 0 else "-Infinity" if obj < 0 else "NaN"}
    if isinstance(obj, dict):
        return {k: _encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_floats(v) for v in obj]
    return obj


def read_json(path: str | Path) -> dict[str, Any]:
    from transmamba.errors import MismatchError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MismatchError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise MismatchError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return _decode_floats(data)


def weight_file(directory: Path) -> Path | None:
    """The first weight file (or index) present in `directory`, in the order of WEIGHT_FILES."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # the unpickler refuses code objects: say so rather than a bare traceback
        from transmamba.errors import UntrustedFileError

        raise UntrustedFileError(
            f"{path}: refused: it holds pickled objects other than plain tensors, which are never unpickled; "
            "convert it to safetensors"
        ) from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: expected a dict of tensor name -> tensor")
    return data


def _load_one(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return _load_bin(path)


def read_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in `directory` (single file or shards listed by an index)."""
    directory = Path(directory)
    found = weight_file(directory)
    if found is None:
        raise FileNotFoundError(f"{directory}: no weights found (looked for {', '.join(WEIGHT_FILES)})")
    if not found.name.endswith(".index.json"):
        return _load_one(found)
    weight_map = read_json(found).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{found}: has no 'weight_map' naming the shard of each tensor")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = (directory / shard).resolve()
        if shard_path.parent != directory.resolve():
            raise ValueError(f"{found}: shard {shard!r} lies outside {directory}")
        if not shard_path.is_file():
            raise FileNotFoundError(f"{found}: lists shard {shard!r}, which is missing")
        tensors.update(_load_one(shard_path))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ValueError(f"{found}: tensors {missing[:5]} are listed in the index but not in its shards")
    return tensors


def write_json(path: Path, data: dict[str, Any]) -> None:
    from transmamba.models.lm import _atomic_write

    text = json.dumps(_encode_floats(data), indent=2) + "\n"
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    from transmamba.models.lm import _atomic_write

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
