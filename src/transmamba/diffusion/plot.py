"""Sample grids as PNG: images in [−1, 1] tiled in rows, upscaled with nearest-neighbour so small images stay
crisp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["image_grid", "save_grid"]


def image_grid(images: torch.Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """images (N, C, S, S) in [−1, 1] -> uint8 (rows·(S+pad)+pad, nrow·(S+pad)+pad, C) grid, C ∈ {1, 3}."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image_grid: images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if nrow < 1:
        raise ValueError(f"image_grid: nrow must be >= 1, got {nrow}")
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = (
        ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    )
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w
        ] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = 4) -> Path:
    """Write ``image_grid(images, nrow)`` upscaled ``scale``× as a PNG; returns the path."""
    from PIL import Image

    grid = image_grid(images, nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(
        grid[..., 0] if grid.shape[-1] == 1 else grid, mode="L" if grid.shape[-1] == 1 else "RGB"
    )
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path
