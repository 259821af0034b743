"""Argument checks shared by the ops: errors name the op, the argument, its shape and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_shape(op: str, name: str, tensor: torch.Tensor, expected: Sequence[int | None]) -> None:
    """Raise ValueError unless `tensor.shape` matches `expected` (None matches any size)."""
    shape = tuple(tensor.shape)
    ok = len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{op}: {name} must have shape {want}, got {shape}")


def check_divides(op: str, small_name: str, small: int, big_name: str, big: int) -> None:
    """Raise ValueError unless `small` divides `big` (e.g. ngroups must divide nheads)."""
    if small <= 0 or big % small != 0:
        raise ValueError(f"{op}: {small_name}={small} must be a positive divisor of {big_name}={big}")
