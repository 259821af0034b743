"""TransPoint schedules: one TransPoint P per TransMamba layer.

A TransMamba layer runs softmax attention on positions t < P and the Mamba-2 SSM on t >= P (P = 0: pure
Mamba-2; P >= sequence length: pure attention). A schedule lists P for every `T` layer, bottom to top.

The TransMamba paper (arXiv 2503.24067, Table 6) compares nine named schedules V1..V9 at its 8K training
length. What we could verify, and what is our reconstruction:

* verified: **V9**, the paper's best, cycles `[0, 128, 256, 512, 1024, 2048, 4096, 8192]` through the
  layers (layer i gets entry i mod 8); **V1-V3** give every layer the same TransPoint.
* our reconstruction (the exact table was not available to us): the shared P of V1/V2/V3 (we use
  2048 / 4096 / 6144, i.e. T/4, T/2, 3T/4) and V4-V8 in full:
    V4  rising linearly from 0 (bottom layer) to 8192 (top layer)
    V5  falling linearly from 8192 (bottom) to 0 (top)
    V6  alternating 0, 8192 (a layer-level hybrid: SSM and attention layers interleaved)
    V7  bottom half 8192 (attention), top half 0 (SSM)
    V8  V9's cycle reversed: [8192, 4096, ..., 128, 0]
  Treat V1-V8 as our own family of schedules in the spirit of the paper, not as its numbers.

Scaling: schedules are written for the paper's training length `PAPER_TRAIN_LEN = 8192`. For a model
trained on shorter sequences, `resolve_schedule(name, n_layers, train_len=L)` maps each P to
`round(P * L / 8192)`, so the fractions of each sequence handled by attention stay the same
(V9 at L=512: [0, 8, 16, 32, 64, 128, 256, 512]).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

PAPER_TRAIN_LEN = 8192
V9_CYCLE = (0, 128, 256, 512, 1024, 2048, 4096, 8192)


def _uniform(p: int) -> Callable[[int], list[int]]:
    return lambda n: [p] * n


def _linear(start: int, end: int) -> Callable[[int], list[int]]:
    def make(n: int) -> list[int]:
        if n == 1:
            return [start]
        return [round(start + (end - start) * i / (n - 1)) for i in range(n)]

    return make


def _cycle(values: Sequence[int]) -> Callable[[int], list[int]]:
    return lambda n: [int(values[i % len(values)]) for i in range(n)]


def _halves(bottom: int, top: int) -> Callable[[int], list[int]]:
    return lambda n: [bottom if i < n // 2 else top for i in range(n)]


# name -> (builder(n_layers) -> list of P at PAPER_TRAIN_LEN, one-line description, verified?)
SCHEDULES: dict[str, tuple[Callable[[int], list[int]], str, bool]] = {
    "V1": (_uniform(2048), "every layer P=2048 (shared P; value ours)", False),
    "V2": (_uniform(4096), "every layer P=4096 (shared P; value ours)", False),
    "V3": (_uniform(6144), "every layer P=6144 (shared P; value ours)", False),
    "V4": (_linear(0, PAPER_TRAIN_LEN), "rising linearly 0 -> 8192 bottom to top (ours)", False),
    "V5": (_linear(PAPER_TRAIN_LEN, 0), "falling linearly 8192 -> 0 bottom to top (ours)", False),
    "V6": (_cycle((0, PAPER_TRAIN_LEN)), "alternating 0, 8192 (ours)", False),
    "V7": (_halves(PAPER_TRAIN_LEN, 0), "bottom half 8192, top half 0 (ours)", False),
    "V8": (_cycle(V9_CYCLE[::-1]), "V9's cycle reversed (ours)", False),
    "V9": (_cycle(V9_CYCLE), "cycles [0,128,256,512,1024,2048,4096,8192] (paper's best)", True),
}


def list_schedules() -> list[str]:
    return list(SCHEDULES)


def scale_transpoints(points: Sequence[int], train_len: int, base_len: int = PAPER_TRAIN_LEN) -> list[int]:
    """Map TransPoints written for `base_len` to `train_len`: P -> round(P * train_len / base_len)."""
    if train_len <= 0 or base_len <= 0:
        raise ValueError(
            f"scale_transpoints: lengths must be positive, got train_len={train_len}, base_len={base_len}"
        )
    return [int(round(p * train_len / base_len)) for p in points]


def resolve_schedule(
    schedule: str | Sequence[int],
    n_layers: int,
    *,
    train_len: int | None = None,
) -> list[int]:
    """One TransPoint per TransMamba layer.

    schedule: a name "V1".."V9" (case-insensitive) or an explicit list of non-negative ints.
    n_layers: how many TransMamba layers the model has; an explicit list must have exactly this length.
    train_len: scale a *named* schedule from the paper's 8192 to this length (explicit lists are taken
      as given).
    """
    if n_layers < 0:
        raise ValueError(f"resolve_schedule: n_layers must be >= 0, got {n_layers}")
    if isinstance(schedule, str):
        key = schedule.upper()
        if key not in SCHEDULES:
            raise ValueError(
                f"unknown TransPoint schedule {schedule!r}; named schedules: {', '.join(SCHEDULES)}"
            )
        points = SCHEDULES[key][0](n_layers) if n_layers else []
        if train_len is not None:
            points = scale_transpoints(points, train_len)
        return points
    points = [int(p) for p in schedule]
    if any(p != q for p, q in zip(points, schedule)):
        raise ValueError(f"TransPoints must be integers, got {list(schedule)}")
    if len(points) != n_layers:
        raise ValueError(
            f"got {len(points)} TransPoints for {n_layers} TransMamba layers; "
            "give one P per 'T' in the pattern"
        )
    bad = [p for p in points if p < 0]
    if bad:
        raise ValueError(f"TransPoints must be >= 0, got {bad}")
    return points


def parse_schedule(text: str) -> str | list[int]:
    """A schedule as users type it on a command line: a name ("V9", any case), a comma list ("0,64,128")
    or a JSON list ("[0, 64, 128]"). Returns the name (upper case) or the list of ints, to pass to
    `resolve_schedule` / `CausalLM.set_transpoints`; raises ValueError saying which forms are accepted."""
    s = str(text).strip()
    forms = f"a name ({', '.join(SCHEDULES)}), a comma list like 0,64,128 or a JSON list like [0, 64, 128]"
    if s.upper() in SCHEDULES:
        return s.upper()
    body = s[1:-1] if s.startswith("[") and s.endswith("]") else s
    parts = [p.strip() for p in body.split(",")]
    if not body.strip() or not all(p.isdigit() for p in parts):
        raise ValueError(f"TransPoint schedule {text!r} is not {forms}")
    return [int(p) for p in parts]
