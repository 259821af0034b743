"""Point-cloud classification's train / evaluate loop and metrics.

Metrics over a split of N clouds with confusion matrix M (M[i, j] = clouds of class i predicted j):

    overall accuracy  OA   = Σ_i M[i, i] / N
    mean class acc.   mAcc = mean over classes i with support of M[i, i] / Σ_j M[i, j]

Recipe (the official runner): AdamW (lr 3e-4, weight decay 0.05 on matrices only), learning rate warmed up
linearly then cosine-annealed per optimizer step (``transmamba.training.optim``), gradient-norm clip 10,
loss = CE + GLR + score (``PoinTramba.loss``). The test split is evaluated after every epoch (the papers
report the best epoch); a checkpoint is written atomically after every epoch with
``transmamba.training.checkpoint.save_checkpoint`` (``last``, and ``best`` when OA improved).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transmamba.pointcloud.data import PointCloudData, PointCloudSet

__all__ = [
    "TrainConfig",
    "confusion_matrix",
    "accuracy_metrics",
    "evaluate",
    "train_classifier",
    "write_json",
]


@dataclass
class TrainConfig:
    """Training settings; defaults are sized for the tiny model on 2 CPU cores (the paper: 300 epochs,
    10 warm-up, batch 32, lr 3e-4)."""

    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 10.0
    seed: int = 0
    eval_every: int = 1  # epochs between test evaluations (the last epoch is always evaluated)
    precise_bn_batches: int = 16  # training batches that re-estimate BatchNorm statistics before each eval

    def to_dict(self) -> dict:
        return asdict(self)


def confusion_matrix(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts, rows = true class, columns = prediction."""
    idx = true.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy_metrics(cm: torch.Tensor) -> dict:
    """Overall accuracy and mean class accuracy (module doc) from a confusion matrix, in percent."""
    cm = cm.double()
    support = cm.sum(dim=1)
    oa = float(cm.diag().sum() / cm.sum().clamp(min=1)) * 100
    has = support > 0
    macc = float((cm.diag()[has] / support[has]).mean()) * 100 if has.any() else float("nan")
    return {"oa": oa, "macc": macc}


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches) -> int:
    """Replace every BatchNorm's running mean/variance by their plain average over ``batches`` (forward
    passes in training mode, no gradients): "precise BN". In short runs the default exponential average
    (momentum 0.1) still mixes in statistics of much earlier weights, and evaluation-mode predictions lag
    far behind the training ones. Returns the number of batches used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    was = model.training
    model.train()
    n = 0
    for pts in batches:
        model(pts)
        n += 1
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    model.train(was)
    return n


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: PointCloudSet,
    *,
    num_points: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict:
    """OA, mAcc and the confusion matrix of the model on a split (first ``num_points`` of each cloud)."""
    was = model.training
    model.eval()
    preds, trues = [], []
    for pts, y in split.batches(batch_size, num_points=num_points):
        out = model(pts.to(device))
        preds.append(out.logits.argmax(-1).cpu())
        trues.append(y)
    model.train(was)
    C = len(split.class_names)
    cm = confusion_matrix(torch.cat(preds), torch.cat(trues), C)
    return {**accuracy_metrics(cm), "confusion": cm.tolist(), "clouds": int(cm.sum())}


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False)


def train_classifier(
    model: nn.Module,
    data: PointCloudData,
    cfg: TrainConfig,
    *,
    num_points: int,
    device: torch.device | str = "cpu",
    run_dir: str | Path | None = None,
    checkpoint_meta: dict | None = None,
    log: Callable[[str], None] | None = print,
    progress: bool = False,
    max_steps: int | None = None,
) -> dict:
    """Train (module doc); returns the history with the best and final test metrics.

    ``run_dir``: write atomic checkpoints there after every evaluated epoch (``checkpoint_meta`` goes into
    their trainer_state.json, e.g. the data recipe). ``max_steps`` stops early (smoke tests).
    """
    from transmamba.training.checkpoint import save_checkpoint
    from transmamba.training.optim import build_optimizer, build_scheduler

    log = log or (lambda s: None)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, len(data.train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), device=device)
    sched = build_scheduler(
        opt,
        warmup_steps=int(cfg.warmup_epochs * steps_per_epoch),
        max_steps=total,
        min_lr_ratio=cfg.min_lr_ratio,
    )
    history: dict = {"epochs": [], "best": None}
    best_oa = -math.inf
    step = 0
    t_start = time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.time()
        sums: dict[str, float] = {}
        correct = seen = 0
        bar = _bar(progress, steps_per_epoch, f"epoch {epoch}/{cfg.epochs}")
        batches = data.train.batches(
            cfg.batch_size,
            num_points=num_points,
            shuffle=True,
            drop_last=True,
            generator=gen,
            augmentation=data.augmentation,
            resample=True,
        )
        for pts, y in batches:
            pts, y = pts.to(device), y.to(device)
            out = model(pts)
            loss, parts = model.loss(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            correct += int((out.logits.argmax(-1) == y).sum())
            seen += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{100 * correct / seen:.1f}", refresh=False)
            if max_steps is not None and step >= max_steps:
                break
        if bar is not None:
            bar.close()
        n = max(1, seen // cfg.batch_size)
        rec = {
            "epoch": epoch,
            "step": step,
            "lr": opt.param_groups[0]["lr"],
            **{f"train_{k}": v / n for k, v in sums.items()},
            "train_acc": 100 * correct / max(1, seen),
            "seconds": round(time.time() - t0, 1),
        }
        head = f"epoch {epoch}: ce {rec.get('train_ce', float('nan')):.3f} train acc {rec['train_acc']:.1f}%"
        last = epoch == cfg.epochs or (max_steps is not None and step >= max_steps)
        if epoch % cfg.eval_every == 0 or last:
            if cfg.precise_bn_batches:
                bn_batches = data.train.batches(
                    cfg.batch_size,
                    num_points=num_points,
                    shuffle=True,
                    drop_last=True,
                    generator=gen,
                    augmentation=data.augmentation,
                    resample=True,
                )
                recompute_bn_stats(
                    model, (p.to(device) for p, _ in itertools.islice(bn_batches, cfg.precise_bn_batches))
                )
            ev = evaluate(
                model, data.test, num_points=num_points, batch_size=max(64, cfg.batch_size), device=device
            )
            rec.update(test_oa=ev["oa"], test_macc=ev["macc"])
            is_best = ev["oa"] > best_oa
            if is_best:
                best_oa = ev["oa"]
                history["best"] = {"epoch": epoch, "oa": ev["oa"], "macc": ev["macc"]}
            history["final"] = {
                "epoch": epoch,
                "oa": ev["oa"],
                "macc": ev["macc"],
                "confusion": ev["confusion"],
            }
            if run_dir is not None:
                save_checkpoint(
                    run_dir,
                    step=step,
                    model=model,
                    optimizer=opt,
                    scheduler=sched,
                    trainer_state={
                        "epoch": epoch,
                        "test_oa": ev["oa"],
                        "test_macc": ev["macc"],
                        **(checkpoint_meta or {}),
                    },
                    train_config=cfg.to_dict(),
                    is_best=is_best,
                )
            log(f"{head} test OA {ev['oa']:.1f}% mAcc {ev['macc']:.1f}% ({rec['seconds']} s)")
        else:
            log(head)
        history["epochs"].append(rec)
        if max_steps is not None and step >= max_steps:
            break
    history["steps"] = step
    history["seconds"] = round(time.time() - t_start, 1)
    return history


def write_json(path: str | Path, obj: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)
