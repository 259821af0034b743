"""Sharded checkpoints for FSDP2 runs, through ``torch.distributed.checkpoint`` (DCP).

Same run-folder layout and crash safety as ``checkpoint.py``; a sharded step folder holds::

    run/checkpoints/step-000200/
        sharded/          DCP: .metadata + one __<rank>_0.distcp per rank (model and AdamW state,
                          each rank writing only its own shards, keyed by parameter name)
        config.json       the model's config (what ``from_pretrained`` needs besides weights)
        tokenizer.json, train_config.json, scheduler.pt, rng.pt
        trainer_state.json   written last by rank 0: marks the folder complete

Atomicity: every rank writes into ``checkpoints/.tmp-step-000200-<rank-0 pid>``; after a barrier rank 0
writes the small files, then ``os.replace``s the folder to ``step-000200`` and repoints ``last``/``best``
exactly as the single-file path does. A crash at any point leaves the previous checkpoint in place.

Resharding: DCP stores each tensor's global shape and the pieces each rank wrote, so a checkpoint saved on
N ranks loads on M ranks (M = 1 included: a plain, unsharded model) with the same values. The optimizer
state is stored by parameter name (``get_state_dict``), not by position, so it reshards too.
Only tensors and JSON are read back; DCP's metadata file is read with its own loader, and nothing here
calls ``torch.load`` without ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from transmamba.training.checkpoint import (
    STATE_FILE,
    CheckpointError,
    _fsync_dir,
    _point_link,
    _torch_save,
    _write_json,
    prune,
    rng_state,
    safe_torch_load,
    set_rng_state,
    step_dir_name,
)

SHARDED_DIR = "sharded"


def is_sharded_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / SHARDED_DIR / ".metadata").is_file()


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _dist_on() else 0


def _barrier() -> None:
    if _dist_on():
        dist.barrier()


def _shared_tmp_name(name: str) -> str:
    """One temp-folder name for all ranks (rank 0's pid, so a stale one can be told from a live one)."""
    obj = [f".tmp-{name}-{os.getpid()}"]
    if _dist_on():
        dist.broadcast_object_list(obj, src=0)
    return obj[0]


def _model_config_dict(model: nn.Module) -> dict | None:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else None


def save_sharded_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    trainer_state: dict,
    train_config: dict,
    tokenizer=None,
    is_best: bool = False,
) -> Path:
    """Collective: every rank calls it. Writes the step folder atomically; returns its final path."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    name = step_dir_name(step)
    tmp = ckpts / _shared_tmp_name(name)
    final = ckpts / name
    rank0 = _rank() == 0
    if rank0:
        ckpts.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    try:
        if optimizer is not None:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
        else:
            state = {"model": get_model_state_dict(model)}
        dcp.save(state, checkpoint_id=str(tmp / SHARDED_DIR))
        _barrier()
        if rank0:
            config = _model_config_dict(model)
            if config is not None:
                _write_json(tmp / "config.json", config)
            if tokenizer is not None:
                tokenizer.save(tmp / "tokenizer.json")
            _write_json(tmp / "train_config.json", train_config)
            if scheduler is not None:
                _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
            _torch_save(rng_state(), tmp / "rng.pt")
            _write_json(tmp / STATE_FILE, {**trainer_state, "step": step, "sharded": True})
            _fsync_dir(tmp)
            if final.exists():
                old = ckpts / f".old-{name}-{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(ckpts)
            _point_link(run_dir / "last", f"checkpoints/{name}")
            if is_best or not (run_dir / "best").exists():
                _point_link(run_dir / "best", f"checkpoints/{name}")
            prune(run_dir)
    except BaseException:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier()
    return final


def load_sharded_checkpoint(
    folder: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> dict:
    """Collective when distributed. Fills ``model`` (sharded or not) and ``optimizer`` in place from a
    sharded step folder, whatever number of ranks wrote it; returns the trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    folder = Path(folder)
    if not (is_sharded_checkpoint(folder) and (folder / STATE_FILE).is_file()):
        raise CheckpointError(f"{folder} is not a complete sharded checkpoint (no {SHARDED_DIR}/.metadata "
                              f"or {STATE_FILE})")
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    try:
        with warnings.catch_warnings():  # one process reading a sharded folder is intended, not a mistake
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, checkpoint_id=str(folder / SHARDED_DIR))
    except Exception as err:  # a shape/key mismatch: say which checkpoint, keep DCP's detail
        raise CheckpointError(f"{folder} does not fit this model/optimizer: {err}") from None
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        set_model_state_dict(model, state["model"])
    if scheduler is not None and (folder / "scheduler.pt").is_file():
        scheduler.load_state_dict(safe_torch_load(folder / "scheduler.pt"))
    if restore_rng and (folder / "rng.pt").is_file():
        set_rng_state(safe_torch_load(folder / "rng.pt"))
    with open(folder / STATE_FILE, encoding="utf-8") as f:
        return json.load(f)


def export_pretrained(folder: str | Path, out_dir: str | Path) -> Path:
    """A sharded checkpoint -> the single-file ``save_pretrained`` format (config.json + model.safetensors),
    in one process, without a process group. The tokenizer is copied when the checkpoint has one."""
    from transmamba.models.config import ModelConfig
    from transmamba.models.lm import CausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json, so the model cannot be rebuilt for export")
    model = CausalLM(ModelConfig.load(folder / "config.json"))
    load_sharded_checkpoint(folder, model=model, restore_rng=False)
    out = model.save_pretrained(out_dir)
    if (folder / "tokenizer.json").is_file():
        shutil.copyfile(folder / "tokenizer.json", Path(out) / "tokenizer.json")
    return Path(out)
