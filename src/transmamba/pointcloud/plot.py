"""Point-cloud figures: a confusion matrix, and clouds coloured by their groups' importance scores."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["plot_confusion", "plot_importance"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(
    confusion: list[list[int]] | torch.Tensor, class_names: list[str], path: str | Path, *, title: str = ""
) -> Path:
    """PNG of a confusion matrix (rows = true class, columns = prediction), each row normalised to 100 %,
    counts written in the cells when there are at most 20 classes."""
    plt = _plt()
    cm = torch.as_tensor(confusion, dtype=torch.float64)
    C = cm.shape[0]
    rows = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.32 * C + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rows * 100, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(C), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(C), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if C <= 20:
        for i in range(C):
            for j in range(C):
                if cm[i, j] > 0:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, label="% of the true class")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _name(k: int, class_names: list[str] | None) -> str:
    return class_names[k] if class_names else str(k)


@torch.no_grad()
def plot_importance(
    model: nn.Module,
    points: torch.Tensor,
    path: str | Path,
    *,
    labels: torch.Tensor | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """PNG of up to 4 clouds (points (b, n, 3)), each point coloured by the importance score of the group
    whose centre is nearest to it (the model's scores s_g, eval mode), centres drawn as black crosses; the
    title gives the true and the predicted class."""
    from transmamba.pointcloud.ops import knn

    plt = _plt()
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    points = points[:4].to(device)
    out = model(points)
    model.train(was)
    _, owner = knn(points, out.centres, 1)  # (b, n, 1): nearest centre of every point
    colour = torch.gather(out.scores, 1, owner[..., 0]).cpu()  # (b, n)
    pred = out.logits.argmax(-1).cpu()
    b = points.shape[0]
    fig = plt.figure(figsize=(4 * b, 4.2))
    for i in range(b):
        ax = fig.add_subplot(1, b, i + 1, projection="3d")
        p, c = points[i].cpu(), out.centres[i].cpu()
        sc = ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=colour[i], cmap="viridis", s=4)
        ax.scatter(c[:, 0], c[:, 1], c[:, 2], c="k", marker="x", s=10, linewidths=0.6)
        t = f"pred {_name(int(pred[i]), class_names)}"
        if labels is not None:
            t = f"true {_name(int(labels[i]), class_names)}, " + t
        ax.set_title(t, fontsize=8)
        ax.set_axis_off()
        fig.colorbar(sc, ax=ax, fraction=0.03, pad=0.0, label="group importance score")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
