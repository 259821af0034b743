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


def _pad_dim1(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 1 of x up to `length`."""
    if x.shape[1] == length:
        return x
    pad = x.new_zeros(x.shape[0], length - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], dim=1)


@dataclasses.dataclass
class KVState(LayerState):
    """Attention decode state: preallocated key/value buffers, row r valid up to seqlen_offset[r].

    k, v: (batch, max_len, kv_heads, head_dim). Keys are stored after RoPE (rotated at their own position).
    """

    k: torch.Tensor
    v: torch.Tensor

    @property
    def max_len(self) -> int:
        return int(self.k.shape[1])

    @classmethod
    def empty(cls, batch, max_len, kv_heads, head_dim, *, device=None, dtype=None) -> KVState:
        shape = (batch, max_len, kv_heads, head_dim)
        return cls(
            seqlen_offset=torch.zeros(batch, dtype=torch.long, device=device),
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
        )

    def write(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Write t new entries per row at that row's offset: k_new, v_new (b, t, hkv, dh). The offset is not
        advanced (the caller does, after attending)."""
        b, t = k_new.shape[:2]
        end = int(self.seqlen_offset.max()) + t if b else 0
        if end > self.max_len:
            raise ValueError(
                f"KVState: writing {t} tokens at offsets up to {int(self.seqlen_offset.max())} exceeds "
                f"max_len={self.max_len}; allocate the state with a larger max_len"
            )
        rows = torch.arange(b, device=k_new.device)[:, None]  # (b, 1)
        cols = self.seqlen_offset[:, None] + torch.arange(t, device=k_new.device)  # (b, t)
        self.k[rows, cols] = k_new.to(self.k.dtype)
        self.v[rows, cols] = v_new.to(self.v.dtype)

    @classmethod
    def stack(cls, states: list[KVState]) -> KVState:
        """Merge states (any batch sizes) along the batch; buffers are zero-padded to the longest max_len."""
        if not states:
            raise ValueError("KVState.stack: need at least one state")
        length = max(s.max_len for s in states)
        return cls(
            seqlen_offset=torch.cat([s.seqlen_offset for s in states]),
            k=torch.cat([_pad_dim1(s.k, length) for s in states]),
            v=torch.cat([_pad_dim1(s.v, length) for s in states]),
        )


@dataclasses.dataclass
class Mamba1State(LayerState):
    """Mamba-1 decode state: the conv window and the SSM state (constant size in the sequence length).

    conv_state: (batch, d_inner, d_conv - 1) the last inputs of the causal conv;
    ssm_state: (batch, d_inner, d_state) fp32 by default.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor

    @classmethod
    def empty(cls, batch, d_inner, d_conv, d_state, *, device=None, dtype=None, ssm_dtype=torch.float32):
        return cls(
            seqlen_offset=torch.zeros(batch, dtype=torch.long, device=device),
            conv_state=torch.zeros(batch, d_inner, d_conv - 1, device=device, dtype=dtype),
            ssm_state=torch.zeros(batch, d_inner, d_state, device=device, dtype=ssm_dtype),
        )

    @classmethod
    def stack(cls, states: list[Mamba1State]) -> Mamba1State:
        if not states:
            raise ValueError("Mamba1State.stack: need at least one state")
        return cls(
            seqlen_offset=torch.cat([s.seqlen_offset for s in states]),
            conv_state=torch.cat([s.conv_state for s in states]),
            ssm_state=torch.cat([s.ssm_state for s in states]),
        )
