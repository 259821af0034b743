"""Checkpoints that survive a crash at any moment.

Layout of a run folder::

    run/checkpoints/step-000200/   model.safetensors, config.json (the model), tokenizer.json,
                                   optimizer.pt, scheduler.pt, rng.pt, trainer_state.json, train_config.json
    run/last -> checkpoints/step-000200      (symlinks, replaced atomically)
    run/best -> checkpoints/step-000100

A save writes every file into ``checkpoints/.tmp-step-000200-<pid>``, flushes them, then renames that
folder to ``step-000200`` (``os.replace``: atomic on POSIX), then atomically repoints ``last`` (and
``best`` when the validation loss improved), and only then deletes folders that neither link names.
A process killed at any point leaves the previous checkpoint intact and findable: loading follows
``last`` and, if the link is missing or broken, takes the highest complete ``step-*`` folder
(``trainer_state.json`` is written last and marks completeness).

Nothing is unpickled from untrusted sources: tensors load with ``torch.load(weights_only=True)`` and the
model with safetensors.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transmamba.errors import UsageError

STATE_FILE = "trainer_state.json"
STEP_PREFIX = "step-"


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint that is missing, incomplete, or does not fit (one line; exit code 2 in the CLI)."""


def _test_pause() -> None:
    """Test hook: ``TRANSMAMBA_TEST_SAVE_DELAY=s`` sleeps between files so a test can kill a save midway."""
    delay = os.environ.get("TRANSMAMBA_TEST_SAVE_DELAY")
    if delay:
        time.sleep(float(delay))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------------------------- model io


def save_model_files(model: nn.Module, folder: Path) -> None:
    """model.safetensors + config.json: ``save_pretrained`` when the model has one, else raw safetensors."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / "model.safetensors"))


def load_model_weights(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file, load_model

    path = folder / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no model.safetensors")
    if hasattr(model, "load_checkpoint_tensors"):  # CausalLM: checks names and shapes, handles tying
        try:
            model.load_checkpoint_tensors(load_file(str(path)), source=str(path))
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        return
    try:
        load_model(model, str(path), strict=True)
    except Exception:
        # a save_pretrained that stores tied weights once: fill what is there, then check nothing is missing
        sd = load_file(str(path))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        tied = {n for n, _ in model.named_parameters()}  # named_parameters() lists a tied tensor once
        really_missing = [k for k in missing if k in tied]
        if really_missing or unexpected:
            raise CheckpointError(
                f"{path} does not match the model: missing {really_missing[:5]}, unexpected {unexpected[:5]}"
            ) from None


# ------------------------------------------------------------------------------------------- save / find


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


def _point_link(link: Path, target_rel: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target_rel, tmp)
    os.replace(tmp, link)


def save_checkpoint(
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
    """Write a complete checkpoint for ``step`` atomically; repoint ``last`` (and ``best``); prune."""
    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    tmp = ckpts / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_model_files(model, tmp)
        _test_pause()
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer.json")
        _write_json(tmp / "train_config.json", train_config)
        _test_pause()
        if optimizer is not None:
            _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        _torch_save(rng_state(), tmp / "rng.pt")
        _test_pause()
        _write_json(tmp / STATE_FILE, {**trainer_state, "step": step})  # last: marks completeness
        _fsync_dir(tmp)
        final = ckpts / name
        if final.exists():  # re-saving a step (e.g. after resuming): move the old one aside first
            old = ckpts / f".old-{name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(ckpts)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_link(run_dir / "last", f"checkpoints/{name}")
    if is_best or not (run_dir / "best").exists():
        _point_link(run_dir / "best", f"checkpoints/{name}")
    prune(run_dir)
    return final


def _linked(run_dir: Path) -> set[str]:
    keep = set()
    for link in ("last", "best"):
        p = run_dir / link
        if p.is_symlink():
            keep.add(Path(os.readlink(p)).name)
    return keep


def prune(run_dir: Path) -> None:
    """Delete checkpoint folders that neither ``last`` nor ``best`` points to (and stale temp folders)."""
    ckpts = Path(run_dir) / "checkpoints"
    keep = _linked(Path(run_dir))
    for p in ckpts.iterdir():
        if p.name.startswith(STEP_PREFIX) and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith((".tmp-", ".old-")):
            pid = p.name.rsplit("-", 1)[-1]
            if pid == str(os.getpid()) or not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def is_complete(folder: Path) -> bool:
    """trainer_state.json (written last) and the weights: model.safetensors, or a sharded/ DCP folder."""
    weights = (folder / "model.safetensors").is_file() or (folder / "sharded" / ".metadata").is_file()
    return (folder / STATE_FILE).is_file() and weights


def find_checkpoint(run_dir: str | Path, which: str = "last") -> Path | None:
    """The checkpoint ``last``/``best`` points to; if the link is absent or broken, the newest one."""
    run_dir = Path(run_dir)
    link = run_dir / which
    if link.exists() and is_complete(link.resolve()):
        return link.resolve()
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return None
    done = sorted(p for p in ckpts.iterdir() if p.name.startswith(STEP_PREFIX) and is_complete(p))
    return done[-1] if done else None


def resolve_checkpoint(path: str | Path, *, flag: str = "--checkpoint") -> Path:
    """The folder to load from ``path``: a checkpoint folder (config.json beside the weights) as given, or a
    ``transmamba train`` run folder's ``last`` checkpoint (``<run>/last``, else its newest complete step)."""
    p = Path(path)
    hint = ("pass a checkpoint folder (config.json + model.safetensors) or a `transmamba train` run folder "
            "(its last checkpoint is used)")
    if not p.exists():
        raise CheckpointError(f"{flag} {p}: no such folder; {hint}")
    if not p.is_dir():
        raise CheckpointError(f"{flag} {p} is a file, not a folder; {hint}")
    if (p / "config.json").is_file():
        return p
    try:
        found = find_checkpoint(p)
    except OSError:
        found = None
    if found is not None and (found / "config.json").is_file():
        return found
    raise CheckpointError(f"{flag} {p} holds no config.json and no complete checkpoint (no last/ or "
                          f"checkpoints/step-*/); {hint}")


def safe_torch_load(path: Path, **kw) -> Any:
    """``torch.load(weights_only=True)``; a file holding anything but tensors and plain containers (a pickled
    object, which could run code) is refused in one line."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes: the refusal below says it all
            return torch.load(path, weights_only=True, **kw)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Weights only load failed" in str(err) or isinstance(err, pickle.UnpicklingError):
            reason = "it holds pickled objects other than tensors, which are never unpickled"
        raise CheckpointError(f"{path}: refused to load: {reason}; re-save the checkpoint with "
                              "`transmamba train` (tensors only)") from None


def load_checkpoint(
    folder: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Restore model (+ optimizer, scheduler, RNG) in place; return the trainer state (step, data, ...)."""
    folder = Path(folder)
    if not is_complete(folder):
        raise CheckpointError(f"{folder} is not a complete checkpoint (no {STATE_FILE} or model.safetensors)")
    load_model_weights(model, folder)
    if optimizer is not None:
        state = safe_torch_load(folder / "optimizer.pt", map_location=map_location)
        optimizer.load_state_dict(state)
    if scheduler is not None and (folder / "scheduler.pt").is_file():
        scheduler.load_state_dict(safe_torch_load(folder / "scheduler.pt"))
    if restore_rng and (folder / "rng.pt").is_file():
        set_rng_state(safe_torch_load(folder / "rng.pt"))
    with open(folder / STATE_FILE, encoding="utf-8") as f:
        return json.load(f)
