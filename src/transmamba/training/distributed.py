"""Data-parallel training with torch.distributed, when launched by torchrun.

``torchrun --nproc_per_node N -m transmamba train ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
with ``WORLD_SIZE > 1`` we join the process group (NCCL on GPUs, Gloo on CPU), wrap the model in DDP,
give each rank its own shard of the data (the loader strides the epoch permutation by rank), average the
validation sums across ranks, and let only rank 0 write checkpoints, metrics and plots. A plain
``transmamba train`` is a world of one and touches none of this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group if torchrun launched us with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def local_device(requested: str, info_local_rank: int | None = None) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK when CUDA is available, else cpu."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if info_local_rank is None else info_local_rank
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return dev


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # MoE layers route tokens to a subset of experts: some parameters get no gradient in a step
    has_moe = "moe" in getattr(model, "kinds", ())
    return DDP(model, device_ids=ids, find_unused_parameters=has_moe)


def unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)  # torch.compile wrapper


def no_sync(model: nn.Module, active: bool):
    """Skip DDP's gradient all-reduce on micro-batches that are not the last of an accumulation."""
    if active and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if any rank raised the flag (e.g. a non-finite loss)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
