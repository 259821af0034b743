"""Forecasting's train / evaluate loop: metrics, the decoder-only forecast step and the training recipe.

Metrics are computed on the standardised data (the LTSF convention, and the paper's tables):
``MSE = mean((ŷ − y)²)`` and ``MAE = mean(|ŷ − y|)`` over every window, step and variable of the split.

The forecast step (decoder-only, as in the Mambaformer code): the model reads ``label_len`` known rows
followed by ``pred_len`` placeholder tokens whose values are zero but whose time features are those of the
future time stamps; the forecast is the model's output at the last ``pred_len`` positions.

Recipe (the paper's scripts): Adam, MSE loss on the horizon, learning rate halved after every epoch
("type1": ``lr_e = lr · 0.5^(e−1)``), early stopping on the validation MSE with patience 3, the best
validation checkpoint restored for testing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transmamba.errors import RunError
from transmamba.forecasting.data import ForecastData, ForecastWindows

__all__ = [
    "mse",
    "mae",
    "forecast_step",
    "evaluate",
    "TrainConfig",
    "lr_at_epoch",
    "train_forecaster",
]


def mse(pred: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray) -> float:
    """Mean squared error over all elements."""
    return float(
        (
            (torch.as_tensor(pred, dtype=torch.float64) - torch.as_tensor(true, dtype=torch.float64)) ** 2
        ).mean()
    )


def mae(pred: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray) -> float:
    """Mean absolute error over all elements."""
    return float(
        (torch.as_tensor(pred, dtype=torch.float64) - torch.as_tensor(true, dtype=torch.float64)).abs().mean()
    )


def forecast_step(model: nn.Module, y: torch.Tensor, y_mark: torch.Tensor, pred_len: int) -> torch.Tensor:
    """Decoder-only forecast: y (b, label_len + H, C) known rows then targets, y_mark (b, label_len + H, F).

    Hands the model only the known rows ``y[:, :label_len]`` and all time features; the model reads
    ``[known, 0 …]`` (the H targets replaced by zeros, their time features kept) and returns its last H
    outputs (b, H, C_out) (``Mambaformer.forecast_window``). The targets never reach the model.
    """
    label_len = y.shape[1] - pred_len
    return model.forecast_window(y[:, :label_len], y_mark)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: ForecastWindows,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    return_predictions: bool = False,
    progress: bool = False,
) -> dict:
    """MSE/MAE of the model over (the first ``limit``) windows of a split, on standardised values."""
    was_training = model.training
    model.eval()
    se = ae = 0.0
    count = 0
    preds = []
    H = windows.pred_len
    batches = windows.batches(batch_size, limit=limit)
    if progress:  # a tqdm bar over the batches, on stderr
        from tqdm.auto import tqdm

        n = len(windows) if limit is None else min(len(windows), limit)
        batches = tqdm(batches, total=-(-n // batch_size), desc="evaluate", unit="batch", leave=False,
                       dynamic_ncols=True)
    for _x, y, _xm, ym in batches:
        pred = forecast_step(model, y, ym, H)
        true = y[:, -H:, : pred.shape[-1]]
        diff = (pred - true).double()
        se += float((diff**2).sum())
        ae += float(diff.abs().sum())
        count += diff.numel()
        if return_predictions:
            preds.append(pred)
    model.train(was_training)
    out = {"mse": se / count, "mae": ae / count, "windows": count // (H * diff.shape[-1])}
    if return_predictions:
        out["predictions"] = torch.cat(preds)
    return out


class NonFiniteError(RunError):
    """The training loss or validation MSE stopped being finite; training stopped (exit code 1)."""


@dataclass
class TrainConfig:
    """Training settings; defaults follow the paper's ETTh1 script (Exchange there: lr 1e-3, batch 64)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-4
    lradj: str = "type1"  # "type1": halve every epoch; "constant"
    patience: int = 3
    max_train_windows: int | None = None  # per epoch, a fresh random subset (CPU budget)
    max_eval_windows: int | None = None  # first N validation windows for early stopping
    seed: int = 0
    grad_clip: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at_epoch(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for 1-based ``epoch``: type1 = lr·0.5^(epoch−1); constant = lr."""
    if cfg.lradj == "type1":
        return cfg.lr * 0.5 ** (epoch - 1)
    if cfg.lradj == "constant":
        return cfg.lr
    raise ValueError(f"lradj {cfg.lradj!r} not in ('type1', 'constant')")


def _progress_bar(enabled: bool, train: ForecastWindows, cfg: TrainConfig, epoch: int):
    """A tqdm bar over one epoch's steps (None when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    n = len(train) if cfg.max_train_windows is None else min(len(train), cfg.max_train_windows)
    steps = n // cfg.batch_size
    return tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="step", dynamic_ncols=True)


def train_forecaster(
    model: nn.Module,
    data: ForecastData,
    cfg: TrainConfig,
    *,
    checkpoint: Callable[[nn.Module, dict], None] | None = None,
    log: Callable[[str], None] | None = print,
    max_steps: int | None = None,
    progress: bool = False,
) -> dict:
    """Train with early stopping on validation MSE; restores the best weights; returns the history.

    ``checkpoint(model, info)`` is called whenever validation improves (e.g. to write files);
    ``max_steps`` stops after that many optimiser steps (smoke tests); ``progress`` shows a per-step
    progress bar (tqdm, on stderr) for each epoch.
    """
    log = log or (lambda s: None)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    H = data.train.pred_len
    best = math.inf
    best_state = None
    bad = 0
    steps = 0
    history: dict = {"epochs": [], "step_losses": []}
    for epoch in range(1, cfg.epochs + 1):
        lr = lr_at_epoch(cfg, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        t0 = time.time()
        losses = []
        batches = data.train.batches(
            cfg.batch_size, shuffle=True, drop_last=True, generator=gen, limit=cfg.max_train_windows
        )
        bar = _progress_bar(progress, data.train, cfg, epoch)
        for _x, y, _xm, ym in batches:
            pred = forecast_step(model, y, ym, H)
            loss = F.mse_loss(pred, y[:, -H:, : pred.shape[-1]])
            if not math.isfinite(loss.item()):
                raise NonFiniteError(f"the training loss became {loss.item()} at epoch {epoch}, "
                                     f"step {steps + 1}; stopped (try a lower --lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
            history["step_losses"].append(loss.item())
            steps += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            if max_steps is not None and steps >= max_steps:
                break
        if bar is not None:
            bar.close()
        val = evaluate(model, data.val, batch_size=max(cfg.batch_size, 64), limit=cfg.max_eval_windows)
        rec = {
            "epoch": epoch,
            "lr": lr,
            "train_mse": float(np.mean(losses)) if losses else float("nan"),
            "val_mse": val["mse"],
            "val_mae": val["mae"],
            "seconds": round(time.time() - t0, 1),
        }
        history["epochs"].append(rec)
        if not math.isfinite(val["mse"]):
            raise NonFiniteError(f"the validation MSE became {val['mse']} after epoch {epoch}; stopped "
                                 "(try a lower --lr)")
        log(
            f"epoch {epoch}: lr {lr:.2e} train {rec['train_mse']:.4f} val {val['mse']:.4f} "
            f"({rec['seconds']} s)"
        )
        if val["mse"] < best:
            best, bad = val["mse"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            rec["best"] = True
            if checkpoint is not None:
                checkpoint(model, rec)
        else:
            bad += 1
            if bad >= cfg.patience:
                log(f"early stopping after epoch {epoch} (no val improvement in {cfg.patience} epochs)")
                break
        if max_steps is not None and steps >= max_steps:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    history["best_val_mse"] = best
    history["steps"] = steps
    return history


def write_json(path: str | Path, obj: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")
