"""Data-parallel training with torch.distributed, when launched by torchrun.

``torchrun --nproc-per-node N -m transmamba train ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
with ``WORLD_SIZE > 1`` we join the process group (NCCL on GPUs, Gloo on CPU) and wrap the model:

- ``parallel="ddp"``: every rank holds the whole model and optimizer; gradients are all-reduced.
- ``parallel="fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on every block, then on the root
  (embedding, final norm, LM head). Parameters, gradients and AdamW state are sharded over the ranks
  (dim 0); a block's parameters are all-gathered just before it runs and freed after. With bf16 the
  mixed-precision policy gathers and computes in bf16 and reduce-scatters gradients in fp32.

Each rank reads its own stride of the epoch's shuffled rows, so with ``batch_size`` rows per rank the
global batch of step k is exactly the single-process batch k of ``batch_size * world`` rows. Validation
sums are all-reduced; only rank 0 prints and writes metrics and plots. A plain ``transmamba train`` is a
world of one and touches none of this.
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


PARALLEL_MODES = ("ddp", "fsdp")


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device, parallel: str = "ddp",
               bf16: bool = False) -> nn.Module:
    """DDP or FSDP2 around ``model`` when the world has more than one rank (else ``model`` unchanged)."""
    if not info.enabled:
        return model
    if parallel == "fsdp":
        return shard_model(model, bf16=bf16)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # MoE layers route tokens to a subset of experts: some parameters get no gradient in a step
    has_moe = "moe" in getattr(model, "kinds", ())
    return DDP(model, device_ids=ids, find_unused_parameters=has_moe)


def shard_model(model: nn.Module, *, bf16: bool) -> nn.Module:
    """FSDP2 in place: ``fully_shard`` each entry of ``model.blocks`` (or each child), then the root.

    bf16: parameters are all-gathered and used in bf16, gradients reduce-scattered in fp32 (the sharded
    fp32 master weights and AdamW state stay fp32). Otherwise everything stays fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32)
    units = list(getattr(model, "blocks", None) or model.children())
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` holds FSDP2 (DTensor) parameters."""
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def scalar(x) -> float:
    """A 0-d tensor, DTensor or number as a Python float (DTensors are materialised first)."""
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x.detach().float().item()) if torch.is_tensor(x) else float(x)


def grad_norm(params) -> float:
    """Global L2 norm of the gradients (sharded gradients summed over ranks)."""
    total = 0.0
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        total += scalar(g.float().pow(2).sum())
    return total ** 0.5


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of ``value`` over ranks (the training loss of the global batch)."""
    if not info.enabled:
        return value
    return all_reduce_sum([value], info, device)[0] / info.world_size


def unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)  # torch.compile wrapper


def no_sync(model: nn.Module, active: bool):
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) on micro-batches that are not the
    last of an accumulation."""
    if active and hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: sync only on the last micro-batch
        return _fsdp_sync(model, not active)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_sync(model: nn.Module, sync: bool):
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


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
