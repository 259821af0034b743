"""The model-level decode cache: one `LayerState` per token-mixer layer, `None` for MLP / MoE layers.

    cache = model.init_cache(batch, max_len)       # fresh, every row at position 0
    model(prompt_ids, cache=cache)                 # prefill: states advance by the prompt length
    model.step(next_ids, cache)                    # decode one token per row
    cache.nbytes()                                 # bytes every state holds right now

Per layer kind (mamba_ssm's state layouts, b rows):
    attention    K and V buffers (b, len, kv_heads, head_dim): grows with the context
    Mamba-2      conv (b, conv_dim, d_conv-1) + SSM (b, heads, headdim, d_state): constant
    Mamba-1      conv (b, d_inner, d_conv-1) + SSM (b, d_inner, d_state): constant
    TransMamba   Mamba-2's conv + SSM, plus a KV cache of (B, x, dt) while a row is before the TransPoint P;
                 it is dropped once every row has passed P, so the cache stops growing from then on.

`cache_bytes_per_sequence(config, context_len)` gives the same numbers analytically (one sequence, tensor
payload only: the per-row position counters and flags are left out) for `transmamba info`.
"""

from __future__ import annotations

import dataclasses

import torch

from transmamba.layers.state import LayerState


@dataclasses.dataclass
class ModelCache:
    """Decode states of a whole model, indexed like the pattern (None where the layer keeps no state)."""

    states: list[LayerState | None]

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, index: int) -> LayerState | None:
        return self.states[index]

    def _first(self) -> LayerState:
        for s in self.states:
            if s is not None:
                return s
        raise ValueError("ModelCache: this model has no token-mixer layers, so there is no state to keep")

    @property
    def batch_size(self) -> int:
        return self._first().batch_size

    @property
    def seqlen_offset(self) -> torch.Tensor:
        """(batch,) long: tokens consumed by each row (the same in every layer)."""
        return self._first().seqlen_offset

    def nbytes(self) -> int:
        """Bytes held by every layer state right now."""
        return sum(s.nbytes() for s in self.states if s is not None)

    def layer_nbytes(self) -> list[int]:
        return [0 if s is None else s.nbytes() for s in self.states]

    def select(self, rows: torch.Tensor | list[int]) -> ModelCache:
        """A new cache holding only `rows` (indices into the batch, in that order); the inverse of `stack`.

        Every tensor of a layer state has the batch as dim 0, so each is indexed along it; a TransMamba
        layer whose kept rows have all converted drops its KV cache (`drop_cache_if_done`)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        states: list[LayerState | None] = []
        for s in self.states:
            if s is None:
                states.append(None)
                continue
            i = idx.to(s.seqlen_offset.device)
            changes = {f.name: getattr(s, f.name)[i] for f in dataclasses.fields(s)
                       if isinstance(getattr(s, f.name), torch.Tensor)}
            new = dataclasses.replace(s, **changes)
            drop = getattr(new, "drop_cache_if_done", None)
            if drop is not None:
                drop()
            states.append(new)
        return ModelCache(states)

    @classmethod
    def stack(cls, caches: list[ModelCache]) -> ModelCache:
        """Merge caches of separately prefilled prompts into one batch, layer by layer (LayerState.stack)."""
        if not caches:
            raise ValueError("ModelCache.stack: needs at least one cache")
        n = len(caches[0])
        if any(len(c) != n for c in caches):
            counts = [len(c) for c in caches]
            raise ValueError(f"ModelCache.stack: caches have different layer counts {counts}")
        states: list[LayerState | None] = []
        for i in range(n):
            layer = [c.states[i] for c in caches]
            if all(s is None for s in layer):
                states.append(None)
            elif any(s is None for s in layer):
                raise ValueError(f"ModelCache.stack: layer {i} has a state in some caches and not in others")
            else:
                states.append(type(layer[0]).stack(layer))
        return cls(states)


def _dtype_bytes(dtype: torch.dtype | int) -> int:
    if isinstance(dtype, int):
        return dtype
    return torch.empty((), dtype=dtype).element_size()


def layer_cache_bytes(config, kind: str, context_len: int, transpoint: int | None = None,
                      dtype: torch.dtype | int = torch.bfloat16) -> int:
    """Bytes one sequence's state holds for one layer of `kind` after `context_len` tokens.

    Everything is in `dtype` except Mamba-1's SSM state, which `Mamba1State` keeps in fp32.
    """
    nb = _dtype_bytes(dtype)
    if kind == "mamba1":
        d = config.m1_d_inner
        return d * (config.m1_d_conv - 1) * nb + d * config.m1_d_state * 4
    return layer_cache_elements(config, kind, context_len, transpoint) * nb


def layer_cache_elements(config, kind: str, context_len: int, transpoint: int | None = None) -> int:
    """Elements one sequence's state holds for one layer of `kind` after `context_len` tokens."""
    if kind == "attention":
        return 2 * config.kv_heads * config.attn_head_dim * context_len
    if kind in ("mamba2", "transmamba"):
        conv_dim = config.d_inner + 2 * config.ngroups * config.d_state
        fixed = conv_dim * (config.d_conv - 1) + config.d_inner * config.d_state
        if kind == "mamba2":
            return fixed
        P = int(transpoint or 0)
        if context_len >= P + 1 or P == 0:  # every position up to now is past P: KV cache dropped
            return fixed
        per_pos = config.ngroups * config.d_state + config.d_inner + config.ssm_heads  # B, x, dt
        return fixed + per_pos * context_len
    if kind == "mamba1":
        return config.m1_d_inner * (config.m1_d_conv - 1) + config.m1_d_inner * config.m1_d_state
    return 0


def cache_bytes_per_sequence(config, context_len: int, dtype: torch.dtype | int = torch.bfloat16) -> int:
    """Analytic decode-state bytes of one sequence after `context_len` tokens (all layers).

    `dtype`: the state dtype (or bytes per element; Mamba-1's SSM state is always counted as fp32, as
    `Mamba1State` keeps it). TransMamba layers count their KV cache of (B, x, dt)
    only while the context is still at or before their TransPoint (a row converts at its first token with
    position >= P, so after P+1 tokens the cache is gone).
    """
    if context_len < 0:
        raise ValueError(f"context_len must be >= 0, got {context_len}")
    points = iter(config.resolved_transpoints())
    total = 0
    for kind in config.layer_kinds:
        P = next(points) if kind == "transmamba" else None
        total += layer_cache_bytes(config, kind, context_len, P, dtype)
    return total


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"
