"""Sample quality without downloads: a small classifier trained on the same images scores the samples.

Classifier: Conv(C→32, 3) ReLU, Conv(32→64, 3, stride 2) ReLU, Conv(64→64, 3, stride 2) ReLU, global mean pool
→ 64-d features f(x), Linear(64 → K). Trained with Adam on 85 % of the images (the rest gives its held-out
accuracy, reported so a weak classifier is visible), a fixed seed, small random shifts as augmentation.

Metrics on generated images x̂ with intended classes y:

    class accuracy = mean[ argmax classifier(x̂) = y ]              (chance = 1 / K)
    Fréchet distance = ‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½)   on f(·) of real vs generated images

(the FID formula on this classifier's features, so values compare only runs on the same data and classifier).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DigitClassifier", "frechet_distance", "train_classifier", "score_samples"]


class DigitClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, C, S, S) in [−1, 1] -> (b, 64)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random integer shifts of up to 1/8 of the side (pad with −1 = background)."""
    h, w = x.shape[-2:]
    s = max(1, w // 8)
    dx, dy = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=g))
    x = F.pad(x, (s, s, s, s), value=-1.0)
    return x[..., s + dy : s + dy + h, s + dx : s + dx + w]


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 15,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[DigitClassifier, float]:
    """Train on 85 % of (images, labels); returns (classifier in eval mode, held-out accuracy)."""
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(0.15 * n)) if n > 10 else 0
    val, tr = perm[:n_val], perm[n_val:]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = DigitClassifier(images.shape[1], num_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(clf(_shift(images[idx], g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    clf.eval()
    acc = float("nan")
    if n_val:
        with torch.no_grad():
            acc = float((clf(images[val]).argmax(-1) == labels[val]).float().mean())
    return clf, acc


def _sqrtm_psd_product_trace(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((Σ₁ Σ₂)^½) via the symmetric form (Σ₁^½ Σ₂ Σ₁^½)^½ (same eigenvalues, stays real and PSD)."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows f1 (n1, d) and f2 (n2, d)."""
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"frechet_distance: need (n, d) features of equal d, got {f1.shape} and {f2.shape}")
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("frechet_distance: need at least 2 rows on each side")
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.atleast_2d(np.cov(f1, rowvar=False)), np.atleast_2d(np.cov(f2, rowvar=False))
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * _sqrtm_psd_product_trace(s1, s2))
    return max(d, 0.0)


@torch.no_grad()
def score_samples(
    clf: DigitClassifier, real: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor
) -> dict:
    """Class accuracy of ``fake`` (b, C, S, S) against ``fake_labels``, Fréchet distance to ``real``."""
    clf.eval()
    pred = clf(fake).argmax(-1)
    fr, ff = clf.features(real).numpy(), clf.features(fake).numpy()
    return {
        "class_accuracy": float((pred == fake_labels).float().mean()),
        "frechet_distance": frechet_distance(fr, ff),
        "n_samples": int(fake.shape[0]),
    }
