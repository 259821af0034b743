"""Run metrics: a CSV file (always), TensorBoard (when importable), and a PNG of the curves.

Bits per byte makes losses comparable across tokenizers::

    bpb = (sum over targets of -ln p(target)) / (ln 2 * bytes of text those targets stand for)
        = mean_loss * n_targets / (n_bytes * ln 2)
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

COLUMNS = ["step", "tokens", "lr", "train_loss", "grad_norm", "val_loss", "val_bpb", "tokens_per_s",
           "elapsed_s"]


def bits_per_byte(mean_loss: float, n_tokens: int, n_bytes: int) -> float:
    """Mean loss (nats/token) over ``n_tokens`` targets standing for ``n_bytes`` bytes, in bits per byte."""
    if n_bytes <= 0:
        return float("nan")
    return mean_loss * n_tokens / (n_bytes * math.log(2))


class MetricsLogger:
    """Append rows to ``metrics.csv``; mirror scalars to TensorBoard when available. Rank 0 only."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict] = []
        if resume_step is not None and self.path.is_file():
            # drop rows the interrupted run wrote after its last checkpoint: they will be written again
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed: CSV only
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=resume_step)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step",) and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.csv with numbers parsed (empty cells -> None)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items()})
    return out


def plot_curves(runs: dict[str, str | Path], out_png: str | Path, *, title: str = "") -> Path:
    """Train and validation loss against step for one or more runs' metrics.csv, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, path) in enumerate(runs.items()):
        rows = read_metrics(path)
        c = colors[i % len(colors)]
        tr = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        va = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if tr:
            ax.plot(*zip(*tr), color=c, alpha=0.45, lw=1, label=f"{label} train")
        if va:
            ax.plot(*zip(*va), color=c, marker="o", ms=3, lw=1.8, label=f"{label} val")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
