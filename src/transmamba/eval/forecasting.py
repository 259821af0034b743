"""Forecasting: metrics, the decoder-only forecast step, the training recipe and forecast plots.

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

from transmamba.data.timeseries import ForecastData, ForecastWindows

__all__ = [
    "mse",
    "mae",
    "forecast_step",
    "evaluate",
    "TrainConfig",
    "lr_at_epoch",
    "train_forecaster",
    "plot_forecasts",
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

    Builds the decoder input ``[y[:, :label_len], 0 …]`` (the H targets replaced by zeros; their time
    features stay), runs the model and returns its last H outputs (b, H, C_out). The targets never reach
    the model.
    """
    label_len = y.shape[1] - pred_len
    dec = torch.cat([y[:, :label_len], torch.zeros_like(y[:, label_len:])], dim=1)
    return model(dec, y_mark)[:, -pred_len:]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: ForecastWindows,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    return_predictions: bool = False,
) -> dict:
    """MSE/MAE of the model over (the first ``limit``) windows of a split, on standardised values."""
    was_training = model.training
    model.eval()
    se = ae = 0.0
    count = 0
    preds = []
    H = windows.pred_len
    for _x, y, _xm, ym in windows.batches(batch_size, limit=limit):
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


def train_forecaster(
    model: nn.Module,
    data: ForecastData,
    cfg: TrainConfig,
    *,
    checkpoint: Callable[[nn.Module, dict], None] | None = None,
    log: Callable[[str], None] | None = print,
    max_steps: int | None = None,
) -> dict:
    """Train with early stopping on validation MSE; restores the best weights; returns the history.

    ``checkpoint(model, info)`` is called whenever validation improves (e.g. to write files);
    ``max_steps`` stops after that many optimiser steps (smoke tests).
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
        for _x, y, _xm, ym in data.train.batches(
            cfg.batch_size, shuffle=True, drop_last=True, generator=gen, limit=cfg.max_train_windows
        ):
            pred = forecast_step(model, y, ym, H)
            loss = F.mse_loss(pred, y[:, -H:, : pred.shape[-1]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
            history["step_losses"].append(loss.item())
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
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


@torch.no_grad()
def plot_forecasts(
    model: nn.Module,
    data: ForecastData,
    path: str | Path,
    *,
    split: str = "test",
    windows: list[int] | None = None,
    variables: list[int] | None = None,
    title: str | None = None,
) -> Path:
    """PNG grid: rows = windows, columns = variables; look-back, truth and forecast (standardised)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = data.split(split)
    n = len(ws)
    windows = windows if windows is not None else sorted({0, n // 3, (2 * n) // 3})[:3]
    variables = variables if variables is not None else sorted({0, data.n_vars - 1})
    x, y, _xm, ym = ws.batch(windows)
    model.eval()
    pred = forecast_step(model, y, ym, ws.pred_len)
    L, H = ws.seq_len, ws.pred_len
    fig, axes = plt.subplots(
        len(windows), len(variables), figsize=(4.5 * len(variables), 2.4 * len(windows)), squeeze=False
    )
    for r, w in enumerate(windows):
        for c, v in enumerate(variables):
            ax = axes[r][c]
            ax.plot(range(L), x[r, :, v], color="0.5", lw=0.8, label="look-back")
            ax.plot(range(L, L + H), y[r, -H:, v], color="k", lw=1.0, label="truth")
            ax.plot(range(L, L + H), pred[r, :, v], color="tab:red", lw=1.0, label="forecast")
            ax.set_title(f"{split} window {w}, {data.columns[v]}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(path: str | Path, obj: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")
