"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine learning-rate schedule.

Schedule (step s counts optimizer steps from 0, W warmup steps, S total, r = min_lr_ratio)::

    lr(s) = lr * (s + 1) / W                                   for s < W
    lr(s) = lr * (r + (1 - r) * 0.5 * (1 + cos(pi * p)))      p = (s - W) / max(1, S - W), clipped to 1

Parameters with fewer than two dimensions (norm weights, biases, Mamba's A_log, D, dt_bias) and
embeddings marked ``_no_weight_decay`` get no weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_multiplier(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Factor applied to the peak lr at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or getattr(p, "_no_weight_decay", False) or name.endswith(("A_log", "dt_bias", ".D")):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float], device: torch.device
) -> torch.optim.AdamW:
    """AdamW; the fused CUDA implementation when the parameters live on a GPU."""
    kwargs = {}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=1e-8, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, max_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    def fn(step: int) -> float:
        return lr_multiplier(step, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
