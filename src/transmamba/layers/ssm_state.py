"""Decode states of the SSD mixers: `Mamba2State` and the per-row state machine `TransMambaState`.

Mamba2State holds what a Mamba-2 layer needs to go on from token t to t+1, whatever t is:

    conv_state (b, conv_dim, d_conv-1)   the last d_conv-1 inputs of the short conv (pre-activation xBC)
    ssm_state  (b, h, p, n)              h_t of the recurrence h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T

TransMambaState adds, for rows whose position is still before the layer's TransPoint P, a KV cache of the
attention path: K = B (b, cap, g, n), V = x (b, cap, h, p) and the raw dt (b, cap, h) (needed by the Memory
Converter). Only positions < P ever use attention, so the cache never holds more than P positions. When a
row reaches position P it is converted (`converted[row]` turns True): its cache becomes its SSM state via
`ssd_final_state`. When every row has converted the cache tensors are dropped (set to None), so `nbytes()`
falls and stays constant from then on: O(1) memory in context length.
"""

from __future__ import annotations

import dataclasses

import torch

from transmamba.layers.state import LayerState


def _cat_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(tensors), dim=0)


def _check_states(cls_name: str, states: list) -> None:
    if not states:
        raise ValueError(f"{cls_name}.stack: needs at least one state")
    for i, s in enumerate(states):
        if not isinstance(s, LayerState) or type(s).__name__ != cls_name:
            raise ValueError(f"{cls_name}.stack: states[{i}] is a {type(s).__name__}, expected {cls_name}")


@dataclasses.dataclass
class Mamba2State(LayerState):
    """State of one Mamba-2 layer for a batch of rows (see the module docstring)."""

    conv_state: torch.Tensor  # (b, conv_dim, d_conv-1)
    ssm_state: torch.Tensor  # (b, h, p, n)

    @classmethod
    def stack(cls, states: list[Mamba2State]) -> Mamba2State:
        """Concatenate states along the batch (they need not be batch 1; offsets are kept per row)."""
        _check_states(cls.__name__, states)
        return cls(
            seqlen_offset=_cat_rows([s.seqlen_offset for s in states]),
            conv_state=_cat_rows([s.conv_state for s in states]),
            ssm_state=_cat_rows([s.ssm_state for s in states]),
        )


@dataclasses.dataclass
class TransMambaState(LayerState):
    """State of one TransMamba layer: a KV cache of (B, x, dt) before the TransPoint, an SSM state after.

    Per row: while `seqlen_offset[row] < transpoint` the row decodes with attention against
    `kv_B / kv_x / kv_dt[row, :seqlen_offset[row]]`; at its first token with position >= transpoint it is
    converted. `ssm_state` rows are zero (and unused) until converted; `conv_state` is kept all along.
    """

    conv_state: torch.Tensor  # (b, conv_dim, d_conv-1)
    ssm_state: torch.Tensor  # (b, h, p, n)
    converted: torch.Tensor  # (b,) bool
    transpoint: int
    kv_B: torch.Tensor | None = None  # (b, cap, g, n)   keys   (cap <= transpoint)
    kv_x: torch.Tensor | None = None  # (b, cap, h, p)   values
    kv_dt: torch.Tensor | None = None  # (b, cap, h)     raw dt (before dt_bias / softplus)

    @property
    def kv_capacity(self) -> int:
        """Positions the KV buffers can hold now (0 once they are dropped)."""
        return 0 if self.kv_B is None else int(self.kv_B.shape[1])

    def ensure_capacity(self, needed: int) -> None:
        """Grow the KV buffers (amortised doubling, never beyond `transpoint`) to hold `needed` positions."""
        if needed > self.transpoint:
            raise ValueError(
                f"TransMambaState: the KV cache holds positions < transpoint={self.transpoint}, "
                f"asked for {needed}"
            )
        cap = self.kv_capacity
        if needed <= cap:
            return
        if self.kv_B is None:
            raise ValueError("TransMambaState: the KV cache was dropped (all rows converted); cannot grow it")
        new_cap = min(self.transpoint, max(needed, 2 * cap))

        def grow(t: torch.Tensor) -> torch.Tensor:
            pad = t.new_zeros((t.shape[0], new_cap - cap, *t.shape[2:]))
            return torch.cat([t, pad], dim=1)

        self.kv_B, self.kv_x, self.kv_dt = grow(self.kv_B), grow(self.kv_x), grow(self.kv_dt)

    def drop_cache_if_done(self) -> None:
        """Free the KV buffers once every row has converted to the SSM state."""
        if self.kv_B is not None and bool(self.converted.all()):
            self.kv_B = self.kv_x = self.kv_dt = None

    @classmethod
    def stack(cls, states: list[TransMambaState]) -> TransMambaState:
        """Merge states (e.g. per-prompt, batch 1) into one batch; KV buffers are zero-padded to the largest.

        Rows whose source state already dropped its cache are converted rows: they get zero KV rows.
        """
        _check_states(cls.__name__, states)
        points = {s.transpoint for s in states}
        if len(points) != 1:
            raise ValueError(f"TransMambaState.stack: states have different transpoints {sorted(points)}")
        transpoint = points.pop()
        converted = _cat_rows([s.converted for s in states])
        kv = None
        if not bool(converted.all()):
            cap = max(s.kv_capacity for s in states)
            ref = next(s for s in states if s.kv_B is not None)
            parts: dict[str, list[torch.Tensor]] = {"kv_B": [], "kv_x": [], "kv_dt": []}
            for s in states:
                for name in parts:
                    t = getattr(s, name)
                    if t is None:
                        like = getattr(ref, name)
                        t = like.new_zeros((s.batch_size, cap, *like.shape[2:]))
                    elif t.shape[1] < cap:
                        t = torch.cat([t, t.new_zeros((t.shape[0], cap - t.shape[1], *t.shape[2:]))], dim=1)
                    parts[name].append(t)
            kv = {name: _cat_rows(ts) for name, ts in parts.items()}
        return cls(
            seqlen_offset=_cat_rows([s.seqlen_offset for s in states]),
            conv_state=_cat_rows([s.conv_state for s in states]),
            ssm_state=_cat_rows([s.ssm_state for s in states]),
            converted=converted,
            transpoint=transpoint,
            **(kv or {}),
        )
