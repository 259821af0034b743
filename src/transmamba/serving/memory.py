"""Fit a TransPoint schedule to a decode-memory budget (the `max_kv_bytes` request option).

A TransMamba layer with TransPoint P keeps a KV cache of (B, x, dt) for positions < P and drops it when the
row reaches P, so over a sequence of L tokens its state peaks at

    fixed + per_pos · min(P, L)       fixed = conv window + SSM state,  per_pos = G·N + d_inner + H

(`inference.cache.layer_cache_bytes` at context min(P, L)). Attention layers hold 2·kv_heads·head_dim·L,
Mamba layers a constant. `fit_transpoints` lowers the largest TransPoints first — every P becomes min(P, c)
with the largest cap c whose peak fits — so the layers that attend over short prefixes keep their schedule
and the memory goes where it was smallest to begin with. P = 0 everywhere is the floor (pure Mamba-2);
a budget under that floor is refused with the floor in the message.
"""

from __future__ import annotations

import torch

from transmamba.inference.cache import layer_cache_bytes


def peak_state_bytes(config, points: list[int], total_len: int,
                     dtype: torch.dtype | int = torch.float32) -> int:
    """Largest decode-state bytes one sequence of `total_len` tokens reaches with TransPoints `points`."""
    it = iter(points)
    total = 0
    for kind in config.layer_kinds:
        if kind == "transmamba":
            P = int(next(it))
            total += layer_cache_bytes(config, kind, min(P, total_len), P, dtype)
        else:
            total += layer_cache_bytes(config, kind, total_len, None, dtype)
    return total


def fit_transpoints(config, points: list[int], total_len: int, max_bytes: int,
                    dtype: torch.dtype | int = torch.float32) -> list[int]:
    """`points` with every P lowered to min(P, c), c the largest cap whose peak state fits `max_bytes`.

    Raises ValueError (naming the floor) when even P = 0 everywhere does not fit."""
    points = [int(p) for p in points]
    if peak_state_bytes(config, points, total_len, dtype) <= max_bytes:
        return points
    floor = peak_state_bytes(config, [0] * len(points), total_len, dtype)
    if floor > max_bytes:
        raise ValueError(f"max_kv_bytes={max_bytes} is below this model's floor of {floor} bytes for "
                         f"{total_len} tokens (every TransPoint at 0); raise it or ask for fewer tokens")
    lo, hi = 0, max(points)  # fits at lo, not at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if peak_state_bytes(config, [min(p, mid) for p in points], total_len, dtype) <= max_bytes:
            lo = mid
        else:
            hi = mid
    return [min(p, lo) for p in points]


__all__ = ["fit_transpoints", "peak_state_bytes"]
