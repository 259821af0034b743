"""The static decode step: `CausalLM.step`'s math with no host-side data-dependent shapes or syncs.

    modes = layer_modes(model, positions)            host side, from the rows' positions (a list of ints)
    logits = static_step(model, ids, cache, modes)   (b,) long -> (b, V); updates `cache` in place

What differs from `CausalLM.step` (the results are the same, up to rounding):
- Attention layers write the new key / value at each row's position with an indexed store and attend over
  the whole preallocated buffer with the lengths as a device tensor (`ops.decode_attention`), instead of
  slicing the buffer to the longest row (a host sync and a shape that changes every step).
- A TransMamba layer runs in the mode the caller fixed for this step: "attn" (every row before its
  TransPoint P), "ssm" (every row at or past P, already converted) or "mixed" (both paths for every row,
  each row keeping the one its position selects). The Memory Converter (KV cache -> SSM state) is not part
  of the step: the caller runs it beforehand for the rows that reached P (`StaticDecoder` does).
- Mamba-1 / Mamba-2 / MLP layers use their own `step`, which is already static.

With fixed `modes` and batch, every step launches the same kernels on the same buffers, so it can be captured
once in a CUDA graph and replayed (`inference/static_decode.py`).
"""

from __future__ import annotations

import math

import torch

from transmamba.ops.attention import apply_rope
from transmamba.ops.conv import causal_conv1d_update
from transmamba.ops.decode_attention import decode_attention
from transmamba.ops.ssd import ssd_step

TM_MODES = ("attn", "ssm", "mixed")


def layer_modes(model, positions: list[int]) -> tuple[str | None, ...]:
    """Per layer: the layer kind ("attention", "mamba2", "mamba1", "mlp", ...) or, for TransMamba layers,
    "attn" / "ssm" / "mixed" from the rows' positions (host ints) against the layer's TransPoint."""
    modes: list[str | None] = []
    for block, kind in zip(model.blocks, model.kinds):
        if kind != "transmamba":
            modes.append(kind)
            continue
        P = block.mixer.transpoint
        before = sum(1 for p in positions if p < P)
        modes.append("attn" if before == len(positions) else "ssm" if before == 0 else "mixed")
    return tuple(modes)


def attention_step(attn, hidden: torch.Tensor, state) -> torch.Tensor:
    """Attention layer, one token per row: hidden (b, D) -> (b, D); writes k/v at seqlen_offset[row]."""
    b = hidden.shape[0]
    q, k, v = attn._qkv(hidden.unsqueeze(1))  # (b, 1, h, dh), (b, 1, hkv, dh) x 2
    pos = state.seqlen_offset  # (b,)
    if attn.rope:
        q, k = apply_rope(q, pos[:, None], attn.rope_base), apply_rope(k, pos[:, None], attn.rope_base)
    rows = torch.arange(b, device=hidden.device)
    state.k[rows, pos] = k[:, 0].to(state.k.dtype)
    state.v[rows, pos] = v[:, 0].to(state.v.dtype)
    out = decode_attention(q[:, 0], state.k, state.v, pos + 1)  # (b, h, dh)
    state.seqlen_offset += 1
    return attn.o_proj(out.reshape(b, attn.n_heads * attn.head_dim))


def transmamba_step(tm, hidden: torch.Tensor, state, mode: str) -> torch.Tensor:
    """TransMamba layer, one token per row, in `mode` ("attn" | "ssm" | "mixed"): hidden (b, D) -> (b, D).

    attn:  K = B, V = x, dt of this token stored at slot seqlen_offset[row]; y = softmax(C·K/√N) V (+ D x),
           ungated RMSNorm.   ssm: S' = exp(dt A) S + dt x Bᵀ, y = S' C + D x, gated RMSNorm.
    mixed: both for every row; a row at or past P keeps the SSM result and the new SSM state (its KV write
    goes to the last slot, which it never reads again), a row before P the attention result.
    """
    if mode not in TM_MODES:
        raise ValueError(f"transmamba_step: mode must be one of {TM_MODES}, got {mode!r}")
    b = hidden.shape[0]
    z, xbc, dt = tm.split_proj(tm.in_proj(hidden))
    xbc, conv_new = causal_conv1d_update(xbc, state.conv_state, tm.conv_weight(), tm.conv1d.bias,
                                         activation="silu")
    state.conv_state.copy_(conv_new)
    x, B, C = tm.split_xbc(xbc)  # (b, h, p), (b, g, n), (b, g, n)
    pos = state.seqlen_offset
    y_att = y_ssm = None
    if mode != "ssm":
        if state.kv_B is None:
            raise ValueError(f"transmamba_step: mode {mode!r} needs the KV cache, but it was dropped "
                             "(every row converted)")
        cap = state.kv_B.shape[1]
        slot = pos.clamp(max=cap - 1)
        rows = torch.arange(b, device=hidden.device)
        state.kv_B[rows, slot] = B.to(state.kv_B.dtype)
        state.kv_x[rows, slot] = x.to(state.kv_x.dtype)
        state.kv_dt[rows, slot] = dt.to(state.kv_dt.dtype)
        g, h, p = tm.ngroups, tm.nheads, tm.headdim
        values = state.kv_x.reshape(b, cap, g, (h // g) * p)  # a group's heads as one value of width r·p
        att = decode_attention(C.to(state.kv_B.dtype), state.kv_B, values, (pos + 1).clamp(max=cap),
                               scale=1.0 / math.sqrt(tm.d_state))  # (b, g, r·p)
        y_att = tm._attention_out(att.reshape(b, h, p).to(x.dtype), x)
    if mode != "attn":
        ys, new = ssd_step(state.ssm_state, x, dt, tm.A, B, C, D=tm.D, dt_bias=tm.dt_bias, dt_softplus=True)
        if mode == "mixed":
            new = torch.where((pos >= state.transpoint)[:, None, None, None], new.to(state.ssm_state.dtype),
                              state.ssm_state)
        state.ssm_state.copy_(new)
        y_ssm = tm._ssm_out(ys, z)
    if y_att is None:
        y = y_ssm
    elif y_ssm is None:
        y = y_att
    else:
        y = torch.where((pos < state.transpoint)[:, None], y_att, y_ssm.to(y_att.dtype))
    state.seqlen_offset += 1
    return tm.out_proj(y)


def static_step(model, ids: torch.Tensor, cache, modes: tuple[str | None, ...]) -> torch.Tensor:
    """One decode token per row through the whole model: ids (b,) long -> logits (b, V); `modes` from
    `layer_modes` (TransMamba rows that reached P must already be converted)."""
    h = model.embed(ids)
    for block, kind, state, mode in zip(model.blocks, model.kinds, cache.states, modes):
        if kind == "attention":
            h = h + attention_step(block.mixer, block.norm(h), state)
        elif kind == "transmamba":
            h = h + transmamba_step(block.mixer, block.norm(h), state, mode)
        else:
            h = block.step(h, state)
    return model.lm_head(model.norm(h))


__all__ = ["TM_MODES", "attention_step", "layer_modes", "static_step", "transmamba_step"]
