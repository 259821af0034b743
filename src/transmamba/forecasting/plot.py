"""Forecast plots: look-back, truth and forecast for a few windows of a split."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transmamba.forecasting.data import ForecastData
from transmamba.forecasting.loop import forecast_step

__all__ = ["plot_forecasts"]


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
