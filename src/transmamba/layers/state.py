"""Per-layer decode state: the base class every mixer's state derives from.

A state belongs to one layer and one batch of sequences. It holds tensors only (so it can be moved,
measured and captured in CUDA graphs) plus `seqlen_offset` (batch,) long: how many tokens each row
has consumed so far. Subclasses are dataclasses; `nbytes()` sums every tensor they hold right now, so
freeing a buffer (setting it to None or to an empty tensor) shows up in the measured cache size.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class LayerState:
    seqlen_offset: torch.Tensor  # (batch,) long

    @property
    def batch_size(self) -> int:
        return int(self.seqlen_offset.shape[0])

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor this state holds now (None fields skipped)."""
        out = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor):
                out.append(value)
        return out

    def nbytes(self) -> int:
        """Bytes held by this state's tensors right now."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @classmethod
    def stack(cls, states: list[LayerState]) -> LayerState:
        """Merge per-prompt states (each batch 1, possibly of different lengths) into one batch."""
        raise NotImplementedError(f"{cls.__name__}.stack is not implemented")
