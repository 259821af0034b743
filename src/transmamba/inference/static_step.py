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
- Linear layers (in_proj / out_proj, q/k/v/o, MLPs, LM head) go through `ops.skinny_linear`: on CUDA in
  bf16 / fp16 a weight-streaming Triton GEMM for the few rows of a step, elsewhere `nn.Linear` itself.
  The MLP's activation is fused into its up projection, and a mixer's / MLP's output projection may hand
  its split-K partial sums (S, b, D) fp32 straight to the residual add + RMSNorm kernel, which sums them.
  So the per-layer step functions below return (b, D), or on CUDA possibly those partials.
- Mamba-2 / TransMamba SSM states are updated in place; on CUDA the whole SSM step between in_proj and
  out_proj (conv update, SSD step, gated RMSNorm) is one kernel (`ops/ssm_decode/triton.py`). A = -exp(A_log)
  and RoPE's frequencies come precomputed (`step_constants`). Mamba-1 / MLP layers use their own `step`.

With fixed `modes` and batch, every step launches the same kernels on the same buffers, so it can be captured
once in a CUDA graph and replayed (`inference/static_decode.py`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transmamba.ops import backend
from transmamba.ops.attention.decode import decode_attention
from transmamba.ops.conv import causal_conv1d_update
from transmamba.ops.skinny_linear import skinny_linear
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


def step_constants(model) -> dict[int, torch.Tensor]:
    """Per layer, what every step would otherwise recompute from the weights: A = -exp(A_log) (fp32) of
    Mamba-2 / TransMamba layers, RoPE's inverse frequencies base^(-2i/dh) (fp32) of attention layers.
    Made once per decoder (so the weights must not change while it decodes)."""
    out: dict[int, torch.Tensor] = {}
    for i, (block, kind) in enumerate(zip(model.blocks, model.kinds)):
        layer = block.mixer
        if kind in ("mamba2", "transmamba"):
            out[i] = layer.A.detach()
        elif kind == "attention" and layer.rope:
            dh = layer.rope_dim  # = head_dim unless the layer rotates only part of each head
            idx = torch.arange(dh // 2, device=layer.q_proj.weight.device, dtype=torch.float32)
            out[i] = layer.rope_base ** (-idx * 2.0 / dh)  # as ops.attention.apply_rope computes it
    return out


def _rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """`ops.attention.apply_rope` for one token per row with the frequencies given: x (b, h, dh), pos (b,).
    CUDA: one Triton launch (`ops/attention/triton_rope.py`) instead of ~12 elementwise passes."""
    if _triton_inplace(x):
        from transmamba.ops.attention.triton_rope import rope_triton

        return rope_triton(x.unsqueeze(1), pos[:, None], inv_freq)[:, 0]
    half = x.shape[-1] // 2
    angles = pos.to(torch.float32)[:, None] * inv_freq  # (b, half)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # (b, 1, half)
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def _triton_inplace(t: torch.Tensor) -> bool:
    return t.is_contiguous() and t.dtype != torch.float64 and backend.use_triton(t)


def _ssd_step_into(state: torch.Tensor, x, dt, A, B, C, D, dt_bias, dt_softplus: bool = True) -> torch.Tensor:
    """ssd_step (with softplus unless dt_softplus=False), writing the new state into `state` (one kernel on
    CUDA); returns y."""
    if _triton_inplace(state):
        from transmamba.ops.ssd.triton import ssd_step_triton

        return ssd_step_triton(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                               inplace=True)[0]
    y, new = ssd_step(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus)
    state.copy_(new)
    return y


def _fused_ok(layer, state) -> bool:
    """Whether `ops/ssm_decode/triton.py` can run this Mamba-2 / TransMamba layer's SSM step."""
    return (_triton_inplace(state.ssm_state) and layer.D.dim() == 1 and layer.d_conv >= 2
            and layer.conv_activation == "silu"  # the fused kernel applies SiLU after the conv
            and layer.norm.group_size == layer.d_inner // layer.ngroups
            and getattr(layer, "dt_limit", None) is None and layer.conv1d.bias is not None)


def _fused_ssm_tail(layer, zxbcdt: torch.Tensor, state, A: torch.Tensor) -> torch.Tensor:
    """conv update + SSD step + gated RMSNorm of one token in one launch: -> (b, d_inner) for out_proj.
    Also advances state.seqlen_offset by one (in the same launch)."""
    from transmamba.ops.ssm_decode.triton import mamba2_decode_triton

    seq = state.seqlen_offset
    inc = seq.dim() == 1 and seq.is_contiguous()
    y = mamba2_decode_triton(zxbcdt, state.conv_state, layer.conv_weight(), layer.conv1d.bias,
                             state.ssm_state, A, layer.dt_bias, layer.D, layer.norm.weight, layer.norm.eps,
                             layer.ngroups, layer.headdim, seqlen_offset=seq if inc else None)
    if not inc:
        state.seqlen_offset += 1
    return y


def attention_step(attn, hidden: torch.Tensor, state, inv_freq: torch.Tensor | None = None) -> torch.Tensor:
    """Attention layer, one token per row: hidden (b, D) -> (b, D); writes k/v at seqlen_offset[row].
    inv_freq: RoPE frequencies from `step_constants` (computed here when None)."""
    b = hidden.shape[0]
    q = skinny_linear(hidden, attn.q_proj).view(b, attn.n_heads, attn.head_dim)  # as Attention._qkv
    k = skinny_linear(hidden, attn.k_proj).view(b, attn.n_kv_heads, attn.head_dim)
    v = skinny_linear(hidden, attn.v_proj).view(b, attn.n_kv_heads, attn.head_dim)
    pos = state.seqlen_offset  # (b,)
    if attn.rope:
        rd = attn.rope_dim
        if inv_freq is None:
            idx = torch.arange(rd // 2, device=hidden.device, dtype=torch.float32)
            inv_freq = attn.rope_base ** (-idx * 2.0 / rd)
        if rd == attn.head_dim:
            q, k = _rope(q, pos, inv_freq), _rope(k, pos, inv_freq)
        else:  # partial rotary: the first rd channels of each head
            q = torch.cat([_rope(q[..., :rd].contiguous(), pos, inv_freq), q[..., rd:]], dim=-1)
            k = torch.cat([_rope(k[..., :rd].contiguous(), pos, inv_freq), k[..., rd:]], dim=-1)
    rows = torch.arange(b, device=hidden.device)
    state.k[rows, pos] = k.to(state.k.dtype)
    state.v[rows, pos] = v.to(state.v.dtype)
    out = decode_attention(q, state.k, state.v, pos + 1)  # (b, h, dh)
    state.seqlen_offset += 1
    return skinny_linear(out.reshape(b, attn.n_heads * attn.head_dim), attn.o_proj,
                         reduce=_reduce(attn.o_proj))


def mamba2_step(layer, hidden: torch.Tensor, state, A: torch.Tensor | None = None) -> torch.Tensor:
    """`Mamba2.step` with the states updated in place and A given; on CUDA everything between in_proj and
    out_proj is one kernel (`ops/ssm_decode/triton.py`)."""
    b = hidden.shape[0]
    A = layer.A if A is None else A
    zxbcdt = skinny_linear(hidden, layer.in_proj)
    if _fused_ok(layer, state):
        y = _fused_ssm_tail(layer, zxbcdt, state, A)  # advances seqlen_offset
        return skinny_linear(y, layer.out_proj, reduce=_reduce(layer.out_proj))
    z, xbc, dt = layer.split_proj(zxbcdt)
    xbc, conv_new = causal_conv1d_update(xbc, state.conv_state, layer.conv_weight(), layer.conv1d.bias,
                                         activation=layer.conv_activation)
    state.conv_state.copy_(conv_new)
    x, B, C = layer.split_xbc(xbc)
    dt, dt_bias, dt_softplus = layer.dt_args(dt)  # dt_limit, when the layer has one, applied here
    y = _ssd_step_into(state.ssm_state, x, dt, A, B, C, layer.D, dt_bias, dt_softplus)
    state.seqlen_offset += 1
    return skinny_linear(layer.norm(y.reshape(b, layer.d_inner), z), layer.out_proj,
                         reduce=_reduce(layer.out_proj))


def transmamba_step(tm, hidden: torch.Tensor, state, mode: str,
                    A: torch.Tensor | None = None) -> torch.Tensor:
    """TransMamba layer, one token per row, in `mode` ("attn" | "ssm" | "mixed"): hidden (b, D) -> (b, D).

    attn:  K = B, V = x, dt of this token stored at slot seqlen_offset[row]; y = softmax(C·K/√N) V (+ D x),
           ungated RMSNorm. The layer's options apply as in `TransMamba.step`: attn_rope rotates C at the
           row's position and every cached B at its slot's, attn_d_skip / attn_norm drop the D skip / the
           norm, conv_activation None skips the SiLU after the conv.
    ssm:   S' = exp(dt A) S + dt x Bᵀ, y = S' C + D x, gated RMSNorm.
    mixed: both for every row; a row at or past P keeps the SSM result and the new SSM state (its KV write
    goes to the last slot, which it never reads again), a row before P the attention result.
    """
    if mode not in TM_MODES:
        raise ValueError(f"transmamba_step: mode must be one of {TM_MODES}, got {mode!r}")
    b = hidden.shape[0]
    zxbcdt = skinny_linear(hidden, tm.in_proj)
    if mode == "ssm" and _fused_ok(tm, state):  # the whole SSM path in one kernel on CUDA
        y = _fused_ssm_tail(tm, zxbcdt, state, tm.A if A is None else A)  # advances seqlen_offset
        return skinny_linear(y, tm.out_proj, reduce=_reduce(tm.out_proj))
    z, xbc, dt = tm.split_proj(zxbcdt)
    xbc, conv_new = causal_conv1d_update(xbc, state.conv_state, tm.conv_weight(), tm.conv1d.bias,
                                         activation=tm.conv_activation)
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
        q, keys = C.to(state.kv_B.dtype), state.kv_B
        if tm.attn_rope:  # as TransMamba.step: the cache keeps B unrotated (the converter needs it), so every
            # key is rotated at its slot's position each step and the query at the row's position
            from transmamba.ops.attention import apply_rope

            idx = torch.arange(tm.d_state // 2, device=hidden.device, dtype=torch.float32)
            q = _rope(q, pos, tm.rope_base ** (-idx * 2.0 / tm.d_state))
            keys = apply_rope(keys, torch.arange(cap, device=hidden.device), tm.rope_base).to(keys.dtype)
        att = decode_attention(q, keys, values, (pos + 1).clamp(max=cap),
                               scale=1.0 / math.sqrt(tm.d_state))  # (b, g, r·p)
        y_att = tm._attention_out(att.reshape(b, h, p).to(x.dtype), x)
    if mode != "attn":
        A = tm.A if A is None else A
        if mode == "ssm":
            ys = _ssd_step_into(state.ssm_state, x, dt, A, B, C, tm.D, tm.dt_bias)
        else:  # rows before P keep their (unused, zero) state
            ys, new = ssd_step(state.ssm_state, x, dt, A, B, C, D=tm.D, dt_bias=tm.dt_bias, dt_softplus=True)
            state.ssm_state.copy_(torch.where((pos >= state.transpoint)[:, None, None, None],
                                              new.to(state.ssm_state.dtype), state.ssm_state))
        y_ssm = tm._ssm_out(ys, z)
    if y_att is None:
        y = y_ssm
    elif y_ssm is None:
        y = y_att
    else:
        y = torch.where((pos < state.transpoint)[:, None], y_att, y_ssm.to(y_att.dtype))
    state.seqlen_offset += 1
    return skinny_linear(y, tm.out_proj, reduce=_reduce(tm.out_proj))


def _reduce(linear) -> bool:
    """`reduce=` for a linear whose output feeds `_add_norm`: False (split-K partials may come back, summed
    by the add-norm kernel) unless it has a bias."""
    return linear.bias is not None


def mlp_step(mlp, hidden: torch.Tensor) -> torch.Tensor:
    """A feed-forward sub-layer on (b, D) with its linears through `skinny_linear`: SwiGLU `layers.MLP`
    down(silu(gate(x)) * up(x)) and `PlainMLP` down(act(up(x))); any other module is called as it is.
    On CUDA the result may be the down projection's split-K partials (S, b, D) fp32, for `_add_norm`."""
    from transmamba.layers.mlp import MLP
    from transmamba.models.lm import PlainMLP

    if type(mlp) is MLP:
        gated = F.silu(skinny_linear(hidden, mlp.gate_proj)) * skinny_linear(hidden, mlp.up_proj)
        return skinny_linear(gated, mlp.down_proj, reduce=_reduce(mlp.down_proj))
    if type(mlp) is PlainMLP:
        h = skinny_linear(hidden, mlp.up_proj, act=mlp.activation)  # the activation fused on CUDA
        return skinny_linear(h, mlp.down_proj, reduce=_reduce(mlp.down_proj))
    return mlp(hidden)


def _add_norm(h: torch.Tensor, delta: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + delta, norm(h + delta)): one launch on CUDA (`ops/norm/triton_add.py`), else the two ops.
    delta (b, D), or the fp32 split-K partials (S, b, D) of the linear that made it (summed in the kernel)."""
    if delta.dim() == 3:
        from transmamba.ops.norm.triton_add import add_rms_norm_triton

        return add_rms_norm_triton(h, delta, norm.weight, norm.eps)
    if _triton_inplace(h) and h.dtype == delta.dtype:
        from transmamba.ops.norm.triton_add import add_rms_norm_triton

        return add_rms_norm_triton(h, delta, norm.weight, norm.eps)
    h = h + delta
    return h, norm(h)


def _embed_norm(embed, ids: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, norm(h)) with h = embed(ids): one launch on CUDA for a plain nn.Embedding and an RMSNorm
    (`ops/norm/triton_add.py`), else the two modules."""
    from transmamba.layers.norm import RMSNorm

    if (_triton_inplace(embed.weight) and type(norm) is RMSNorm and embed.padding_idx is None
            and embed.max_norm is None):
        from transmamba.ops.norm.triton_add import embed_rms_norm_triton

        return embed_rms_norm_triton(ids, embed.weight, norm.weight, norm.eps)
    h = embed(ids)
    return h, norm(h)


def static_step(model, ids: torch.Tensor, cache, modes: tuple[str | None, ...],
                consts: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """One decode token per row through the whole model: ids (b,) long -> logits (b, V); `modes` from
    `layer_modes` (TransMamba rows that reached P must already be converted); `consts` from
    `step_constants` (recomputed per step when None). Blocks are x + mixer(norm(x)) as in `Block.step`;
    each residual add is fused with the next norm (the final norm after the last block)."""
    consts = {} if consts is None else consts
    blocks = model.blocks
    h, n = _embed_norm(model.embed, ids, blocks[0].norm)
    for i, (block, kind, state, mode) in enumerate(zip(blocks, model.kinds, cache.states, modes)):
        if kind == "attention":
            delta = attention_step(block.mixer, n, state, consts.get(i))
        elif kind == "transmamba":
            delta = transmamba_step(block.mixer, n, state, mode, consts.get(i))
        elif kind == "mamba2":
            delta = mamba2_step(block.mixer, n, state, consts.get(i))
        elif block.is_token_mixer:
            delta = block.mixer.step(n, state)
        else:
            delta = mlp_step(block.mixer, n)
        h, n = _add_norm(h, delta, blocks[i + 1].norm if i + 1 < len(blocks) else model.norm)
    return skinny_linear(n, model.lm_head)


__all__ = ["TM_MODES", "attention_step", "layer_modes", "mamba2_step", "mlp_step", "static_step",
           "step_constants", "transmamba_step"]
