"""Choose per-layer TransPoints for a memory budget: measured loss against decode-cache memory.

Memory. Decoding one sequence to `context` tokens, a TransMamba layer with TransPoint P holds a KV cache of
(B, x, dt) for its first min(P, context) tokens, then converts it to its SSM state and frees it; every
layer also holds its conv and SSM state. The peak over the decode is

    peak(P) = max_{t ∈ {P_l ≤ context} ∪ {context}} cache_bytes(t)

(cache_bytes(t): `inference.cache.cache_bytes_per_sequence` after t tokens, which counts a layer's KV while
t <= P_l), the number a budget is compared with.

Loss. TransPoints are planned at the target `context` but measured on held-out rows of `eval_len` tokens
(a CPU cannot evaluate 8K-token rows of a large model quickly): a schedule P is evaluated as
round(P · eval_len / context), i.e. the same fraction of each sequence handled by attention.

Search (greedy descent). Start with every layer at P = context (all attention, the largest cache). At each
step try lowering each layer one notch on the grid {context, context/2, context/4, ..., 0} and take the
move with the smallest loss increase per byte of peak cache saved (ties: the larger saving). The path
from all-attention to all-SSM is the trade-off curve; the plan for a budget is the lowest-loss point of the
path that fits it. Each step costs (number of layers) evaluations.
"""

from __future__ import annotations

import dataclasses
import re
import time

import torch

from transmamba.conversion.to_transmamba import ConversionError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'2GiB', '512 MiB', '1.5GB', '1000000' -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConversionError(f"cannot read the memory size {text!r}; write e.g. 2GiB, 512MiB, 1.5GB or "
                              "bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def notch_grid(context: int) -> list[int]:
    """[context, context/2, context/4, ..., 1, 0] (descending, distinct)."""
    grid, p = [], context
    while p >= 1:
        grid.append(p)
        p //= 2
    return grid + [0]


def peak_cache_bytes(config, transpoints: list[int], context: int,
                     dtype: torch.dtype = torch.bfloat16) -> int:
    from transmamba.inference.cache import cache_bytes_per_sequence

    cfg = config.replace(transpoints=list(transpoints), schedule_train_len=None)
    times = {context} | {p for p in transpoints if p <= context}
    return max(cache_bytes_per_sequence(cfg, t, dtype) for t in times)


@dataclasses.dataclass
class PlanPoint:
    transpoints: list[int]  # at the target context
    peak_bytes: int
    val_loss: float
    decode_tok_s: float | None = None


@torch.no_grad()
def held_out_loss(model, batches: list[dict], transpoints: list[int]) -> float:
    """Mean cross entropy per target token on `batches` with the given (eval-scale) TransPoints."""
    model.set_transpoints(list(transpoints))
    total, count = 0.0, 0
    for b in batches:
        out = model(b["input_ids"], seq_idx=b["seq_idx"], labels=b["labels"])
        n = int((b["labels"][:, 1:] != -100).sum())
        total += float(out.loss) * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def decode_speed(model, transpoints: list[int], prompt_len: int, new_tokens: int = 16) -> float:
    """Tokens/s of greedy decode steps (batch 1) after `prompt_len` tokens (eval scale) were fed through the
    same step (so every layer has converted or still holds its KV cache exactly as in generation)."""
    model.set_transpoints(list(transpoints))
    cache = model.init_cache(1, prompt_len + new_tokens + 1)
    tok = torch.randint(0, model.config.vocab_size, (1,))
    for _ in range(prompt_len):
        tok = model.step(tok, cache).argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        tok = model.step(tok, cache).argmax(-1)
    return new_tokens / (time.perf_counter() - start)


def plan(model, batches: list[dict], *, context: int, eval_len: int, speed_prompt: int | None = None,
         log=None) -> list[PlanPoint]:
    """The greedy path from all-attention to all-SSM (see the module docstring)."""
    n = model.config.n_transmamba
    if n == 0:
        raise ConversionError("the model has no TransMamba ('T') layer to plan")
    grid = notch_grid(context)

    def at_eval(points: list[int]) -> list[int]:
        return [int(round(p * eval_len / context)) for p in points]

    def point(points: list[int], loss: float) -> PlanPoint:
        speed = decode_speed(model, at_eval(points), speed_prompt) if speed_prompt else None
        return PlanPoint(list(points), peak_cache_bytes(model.config, points, context), loss, speed)

    current = [context] * n
    path = [point(current, held_out_loss(model, batches, at_eval(current)))]
    while any(p > 0 for p in current):
        best = None
        for i, p in enumerate(current):
            if p == 0:
                continue
            trial = list(current)
            trial[i] = grid[grid.index(p) + 1]
            saved = path[-1].peak_bytes - peak_cache_bytes(model.config, trial, context)
            loss = held_out_loss(model, batches, at_eval(trial))
            score = (loss - path[-1].val_loss) / max(saved, 1)
            key = (score, -saved)
            if best is None or key < best[0]:
                best = (key, trial, loss)
        current = best[1]
        path.append(point(current, best[2]))
        if log:
            last = path[-1]
            log(f"{last.transpoints}  peak cache {last.peak_bytes:,} B  val loss {last.val_loss:.4f}")
    return path


def choose(path: list[PlanPoint], budget: int) -> PlanPoint:
    """The lowest-loss point of the path whose peak cache fits `budget` bytes."""
    fits = [p for p in path if p.peak_bytes <= budget]
    if not fits:
        smallest = min(p.peak_bytes for p in path)
        raise ConversionError(f"no schedule fits {budget:,} bytes per sequence: even all-SSM needs "
                              f"{smallest:,} bytes at this context")
    return min(fits, key=lambda p: (p.val_loss, p.peak_bytes))


def plot_path(path: list[PlanPoint], out_png, *, chosen: PlanPoint | None = None, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    mem = [p.peak_bytes / 2**20 for p in path]
    ax.plot(mem, [p.val_loss for p in path], "o-", ms=3, label="greedy path")
    if chosen is not None:
        ax.plot([chosen.peak_bytes / 2**20], [chosen.val_loss], "r*", ms=12, label="plan for the budget")
    ax.set_xlabel("peak decode cache per sequence (MiB)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)

