"""TransMamba (arXiv 2503.24067): one layer, Mamba-2's parameters, attention before the TransPoint P.

With the Mamba-2 pieces of `layers.mamba2` (z, x, B, C, dt after in_proj, conv + SiLU on xBC):

    t < P    y_t = softmax_s≤t(C_t · B_s / √N) x_s  (+ D x_t)      head i uses its group's C/B (i // (H/G))
             out_t = out_proj(rms_norm(y_t))                        no z gate on this path
    t ≥ P    h_{P-1} = Σ_{s<P} exp(Σ_{r=s+1}^{P-1} dt_r A) dt_s x_s B_sᵀ     the Memory Converter
             h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_tᵀ,  y_t = h_t C_t + D x_t
             out_t = out_proj(rms_norm(y_t * silu(z_t)))

The converter is exact: outputs at t ≥ P equal a full Mamba-2 pass at t ≥ P. See docs/transmamba-layer.md.

Decoding: `step(hidden, state, mode=...)` is static (no host sync, fixed shapes: CUDA-graph capturable) once
the caller fixes the step's mode from the rows' positions (`step_mode`): "attn" (every row before P), "ssm"
(every row at or past P, already converted by `convert_rows`, the Memory Converter) or "mixed". Without a
mode (eager use) the layer does that bookkeeping itself (`prepare_step`: one device sync).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transmamba.layers.mamba2 import Mamba2, ssd_step_inplace
from transmamba.layers.shared_prefix import share_prefix
from transmamba.layers.ssm_state import TransMambaState
from transmamba.ops.attention import (
    apply_rope,
    decode_attention,
    last_dim_contiguous,
    position_in_document,
    rope_decode,
    rope_frequencies,
)
from transmamba.ops.checks import check_shape
from transmamba.ops.conv import causal_conv1d_update
from transmamba.ops.skinny_linear import skinny_linear
from transmamba.ops.ssd import ssd, ssd_final_state, ssd_step

STEP_MODES = ("attn", "ssm", "mixed")


def _check_transpoint(op: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{op}: transpoint must be a non-negative int, got {value!r}")
    return int(value)


_CUDNN_UNPADDED: dict[tuple, bool] = {}  # (device, dtype, d_qk, d_v, masked) -> cuDNN took it


def _sdpa_cudnn_unpadded(q, k, v, mask, causal: bool, scale: float) -> torch.Tensor | None:
    """SDPA with q/k of width n and v of another width through cuDNN's fused attention, which (unlike
    flash) accepts different q/k and v head dims: no zero-padding copies and 20% fewer score FLOPs. None
    when cuDNN refuses the call (remembered per shape class); the caller then pads for flash."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    key = (q.device, q.dtype, q.shape[-1], v.shape[-1], mask is not None)
    if not _CUDNN_UNPADDED.get(key, True):
        return None
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    except RuntimeError:
        _CUDNN_UNPADDED[key] = False
        return None
    _CUDNN_UNPADDED[key] = True
    return out


class TransMamba(Mamba2):
    """A Mamba-2 layer whose first `transpoint` positions use softmax attention (Q = C, K = B, V = x).

    Args: those of `Mamba2`, plus
        transpoint: P >= 0 (keyword). Positions t < P use attention, t >= P the SSM started from the
            converted state. P = 0 is exactly Mamba-2, P >= T pure attention. Settable after construction
            (`layer.transpoint = P` or `set_transpoint(P)`), e.g. to change a schedule at inference.
        attn_d_skip: add the D skip (D_i · x_t) on the attention path too (default True).
        attn_rope: rotate Q = C and K = B by their positions (RoPE, base `rope_base`) on the attention path
            only (default False). The SSM path and the Memory Converter keep the unrotated B and C, so the
            converter stays exact. Used by Transformers converted to TransMamba (their Q/K were trained with
            RoPE); positions restart at document starts and continue across decode steps.
        attn_norm: apply the layer's (ungated) RMSNorm to the attention output before out_proj (default
            True). A converted Transformer has no norm there; False makes P >= T reproduce it exactly.

    Choices the paper leaves open:
        * No RoPE on the attention path. The causal conv already mixes the 4 nearest tokens, so Q/K carry
          local order, and without RoPE the attention Q/K are exactly the SSM's C/B, which is what makes a
          layer trained with one P usable with another (and keeps attention and SSM on the same features).
        * D skip on the attention path: on by default. D·x_t is a per-token skip, not part of the mixing;
          keeping it on both paths means the two paths differ only in how they mix the past (and in the z
          gate, which the paper's ablation removes from attention). `attn_d_skip=False` drops it.
        * Scale 1/√N (N = d_state), no z gate, then the layer's RMSNorm (same weight, grouped, ungated).
        * Packed sequences (`seq_idx`): P counts from each document's start. Both paths run over the whole
          row (attention with document masks, SSD with seq_idx) and each token takes the path its
          position-in-document selects. That is correct because the converter is exact; it costs an
          (t × t) masked attention and a full SSD per row instead of the split of the unpacked path.
    """

    def __init__(self, d_model: int, *args, transpoint: int = 0, attn_d_skip: bool = True,
                 attn_rope: bool = False, rope_base: float = 10000.0, attn_norm: bool = True, **kwargs):
        super().__init__(d_model, *args, **kwargs)
        self._transpoint = _check_transpoint(type(self).__name__, transpoint)
        self.attn_d_skip = bool(attn_d_skip)
        if attn_rope and self.d_state % 2:
            raise ValueError(f"TransMamba: attn_rope needs an even d_state, got {self.d_state}")
        if attn_rope and not rope_base > 0:
            raise ValueError(f"TransMamba: rope_base must be > 0, got {rope_base}")
        self.attn_rope, self.rope_base, self.attn_norm = bool(attn_rope), float(rope_base), bool(attn_norm)
        self.full_ssd_in_training: bool | None = None  # see `_full_ssd`

    @property
    def transpoint(self) -> int:
        return self._transpoint

    @transpoint.setter
    def transpoint(self, value: int) -> None:
        self._transpoint = _check_transpoint(type(self).__name__, value)

    def set_transpoint(self, value: int) -> None:
        """Change P (e.g. a new schedule at inference). States made by `init_state` keep the P they had."""
        self.transpoint = value

    # ------------------------------------------------------------------------------------ the two paths
    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        q_start: int = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Grouped softmax attention. q (b, tq, g, n), k (b, tk, g, n), v (b, tk, h, p) -> (b, tq, h, p).

        Every head of a group shares that group's attention pattern, so the group's heads are attended as
        one value of width (h/g)·p. Without `mask`, query i sits at position q_start + i and sees keys
        0..q_start + i; `mask` (bool, broadcastable to (b, g, tq, tk)) overrides that.
        """
        b, tq, g, n = q.shape
        tk, h, p = k.shape[1], v.shape[2], v.shape[3]
        vg = v.reshape(b, tk, g, (h // g) * p).transpose(1, 2)  # (b, g, tk, r·p)
        causal = False
        if mask is None:
            if q_start == 0 and tq == tk:
                causal = True
            else:
                qpos = torch.arange(q_start, q_start + tq, device=q.device)
                mask = torch.arange(tk, device=q.device)[None, :] <= qpos[:, None]  # (tq, tk)
        # (b, g, t, ·) with a unit-stride last dim: q / k / v built from the conv output of a prefill with a
        # state come out as views of (b, conv_dim, t), last-dim stride t, which fused SDPA kernels refuse
        qg, kg, vg = (last_dim_contiguous(a) for a in (q.transpose(1, 2), k.transpose(1, 2).to(q.dtype),
                                                       vg.to(q.dtype)))
        width = vg.shape[-1]
        if width != n and qg.is_cuda and tq > 1:  # training / prefill (decode steps keep the padded path)
            out = _sdpa_cudnn_unpadded(qg, kg, vg, mask, causal, 1.0 / math.sqrt(n))
            if out is not None:
                return out.transpose(1, 2).reshape(b, tq, h, p)
        if width != n:
            # Fused SDPA kernels (flash) need one head dim for q, k and v; zero-padding q and k leaves every
            # score q·k unchanged and padding v adds columns we drop, so pad all three to the larger one
            # (the scale stays 1/sqrt(n)) rather than fall back to a kernel that materialises the scores.
            dim = max(n, width)
            qg, kg = F.pad(qg, (0, dim - n)), F.pad(kg, (0, dim - n))
            vg = F.pad(vg, (0, dim - width))
        out = F.scaled_dot_product_attention(
            qg, kg, vg, attn_mask=mask, is_causal=causal, scale=1.0 / math.sqrt(n),
        )[..., :width]  # (b, g, tq, r·p)
        return out.transpose(1, 2).reshape(b, tq, h, p)

    def _attention_out(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Attention-path tail: y, x (..., h, p) -> ungated RMSNorm of y (+ D x), (..., d_inner)."""
        if self.attn_d_skip:
            y = y + x.to(y.dtype) * self.D.to(y.dtype)[:, None]
        return self.norm(y.flatten(-2), None) if self.attn_norm else y.flatten(-2)

    def _rotate(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE on the attention path's Q or K when `attn_rope` (else t unchanged): t (b, s, g, n), positions
        (s,) or (b, s)."""
        if not self.attn_rope:
            return t
        return apply_rope(t, positions, self.rope_base).to(t.dtype)

    def _ssm_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """SSM-path tail: y (..., h, p) (D already in), z (..., d_inner) -> gated RMSNorm (..., d_inner)."""
        return self.norm(y.flatten(-2), z)

    def _ssd(self, x, dt, B, C, **kw):
        return ssd(x, dt, self.A, B, C, chunk_size=self.chunk_size, D=self.D, dt_bias=self.dt_bias,
                   dt_softplus=True, **kw)

    def _full_ssd(self, x: torch.Tensor) -> bool:
        """Whether the unpacked forward runs one SSD over the whole row instead of converter + suffix SSD.

        `full_ssd_in_training` None (default): yes for CUDA tensors that need gradients, where the one
        differentiable Triton SSD call is much cheaper than the torch converter's autograd graph; the
        converter stays on every no-gradient (inference) path. True / False force it either way."""
        if self.full_ssd_in_training is not None:
            return bool(self.full_ssd_in_training)
        return x.is_cuda and torch.is_grad_enabled() and x.requires_grad

    def _convert(self, x: torch.Tensor, dt: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """The Memory Converter: SSM state after a prefix (b, l, ...) -> (b, h, p, n)."""
        return ssd_final_state(x, dt, self.A, B, dt_bias=self.dt_bias, dt_softplus=True,
                               chunk_size=self.chunk_size)

    # --------------------------------------------------------------------------------------- forward
    def forward(
        self,
        hidden: torch.Tensor,
        *,
        seq_idx: torch.Tensor | None = None,
        state: TransMambaState | None = None,
    ) -> torch.Tensor:
        """hidden (b, t, D) -> (b, t, D). With `state`: prefill continuing from it (rows may sit at different
        positions and may cross P), updating it in place. `seq_idx` (packing) and `state` do not combine."""
        self.check_hidden(hidden, seq_idx)
        if state is not None:
            if seq_idx is not None:
                raise ValueError("TransMamba: seq_idx (packed documents) cannot be used with a decode state")
            return self._prefill(hidden, state)
        if seq_idx is not None:
            return self._forward_packed(hidden, seq_idx)
        b, t, _ = hidden.shape
        P = self.transpoint
        if P == 0:
            return super().forward(hidden)
        z, x, B, C, dt, _ = self.project_and_conv(hidden, None, None)
        n_att = min(P, t)
        full = n_att < t and self._full_ssd(x)
        share = full
        # positions [0, n_att): attention among themselves only (no slicing when that is every position: a
        # slice's backward writes its gradient into a zero-filled copy of the whole tensor)
        if share:  # x, B, C feed the SSD whole and attention their prefix: one gradient each, summed in place
            (x, xa), (B, Ba), (C, Ca) = (share_prefix(v, n_att) for v in (x, B, C))
        else:
            xa, Ba, Ca = (x, B, C) if n_att == t else (x[:, :n_att], B[:, :n_att], C[:, :n_att])
        if self.attn_rope:
            pos = torch.arange(n_att, device=hidden.device)
            Ca, Ba = self._rotate(Ca, pos), self._rotate(Ba, pos)
        parts = [self._attention_out(self._attend(Ca, Ba, xa), xa)]
        if n_att < t:  # positions [P, t): SSD from the converted state
            if full:  # SSD over all t positions, outputs before P dropped (same values)
                y = self._ssd(x, dt, B, C)[:, P:]
            else:  # converter + SSD on the suffix: prefix SSD outputs never computed
                h0 = self._convert(x[:, :P], dt[:, :P], B[:, :P])
                y = self._ssd(x[:, P:], dt[:, P:], B[:, P:], C[:, P:], initial_state=h0)
            parts.append(self._ssm_out(y, z[:, P:]))
        return self.out_proj(torch.cat(parts, dim=1))

    def _forward_packed(self, hidden: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
        P = self.transpoint
        use_attn = position_in_document(seq_idx) < P  # (b, t)
        if not bool(use_attn.any()):
            return super().forward(hidden, seq_idx=seq_idx)
        z, x, B, C, dt, _ = self.project_and_conv(hidden, seq_idx, None)
        t = hidden.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=hidden.device).tril()
        same_doc = seq_idx[:, :, None] == seq_idx[:, None, :]  # (b, t, t)
        pos = position_in_document(seq_idx) if self.attn_rope else None
        Cq, Bk = self._rotate(C, pos), self._rotate(B, pos)
        y = self._attention_out(self._attend(Cq, Bk, x, mask=(same_doc & causal)[:, None]), x)
        if not bool(use_attn.all()):
            y_ssm = self._ssm_out(self._ssd(x, dt, B, C, seq_idx=seq_idx), z)
            y = torch.where(use_attn[..., None], y, y_ssm)
        return self.out_proj(y)

    # ---------------------------------------------------------------------------------------- decode
    def init_state(
        self, batch: int, *, max_len: int | None = None, device=None, dtype=None
    ) -> TransMambaState:
        """A fresh state at position 0. The KV buffers are preallocated for min(P, max_len) positions (only
        positions < P ever use attention) and grow on demand up to P; with P = 0 there are none."""
        offset, conv, ssm_state = self._state_tensors(batch, device, dtype)
        P = self.transpoint
        kv = {}
        if P > 0:
            cap = P if max_len is None else max(0, min(P, int(max_len)))
            g, n, h, p = self.ngroups, self.d_state, self.nheads, self.headdim
            kv = {
                "kv_B": conv.new_zeros(batch, cap, g, n),
                "kv_x": conv.new_zeros(batch, cap, h, p),
                "kv_dt": conv.new_zeros(batch, cap, h),
            }
        converted = torch.full((batch,), P == 0, dtype=torch.bool, device=offset.device)
        return TransMambaState(
            seqlen_offset=offset, conv_state=conv, ssm_state=ssm_state, converted=converted,
            transpoint=P, **kv,
        )

    def _check_tm_state(self, state, batch: int) -> None:
        self.check_state(state, batch, TransMambaState)
        if state.transpoint != self.transpoint:
            raise ValueError(
                f"TransMamba: the state was made for transpoint={state.transpoint} but the layer now has "
                f"transpoint={self.transpoint}; make a new state after changing the transpoint"
            )

    def convert_rows(self, state: TransMambaState, rows: torch.Tensor) -> None:
        """The Memory Converter for `rows` (long indices) whose KV caches hold all P prefix positions: their
        SSM state becomes the final state of SSD over the cached (B, x, dt) (`_convert`), `converted` set."""
        P = state.transpoint
        h0 = self._convert(state.kv_x[rows, :P], state.kv_dt[rows, :P], state.kv_B[rows, :P])
        state.ssm_state[rows] = h0.to(state.ssm_state.dtype)
        state.converted[rows] = True

    def _prefill(self, hidden: torch.Tensor, state: TransMambaState) -> torch.Tensor:
        b, t, _ = hidden.shape
        self._check_tm_state(state, b)
        z, x, B, C, dt, conv_final = self.project_and_conv(hidden, None, state.conv_state)
        state.conv_state.copy_(conv_final)
        offsets = state.seqlen_offset
        starts = torch.unique(offsets).tolist()
        if len(starts) == 1:  # all rows at one position (a fresh cache): no row-gathered copies of z, x, B, C
            y = self._prefill_rows(state, None, int(starts[0]), z, x, B, C, dt)
        else:
            y = hidden.new_empty(b, t, self.d_inner)
            for o in starts:  # rows at the same position are processed together
                rows = (offsets == o).nonzero().squeeze(1)
                y[rows] = self._prefill_rows(state, rows, int(o), z[rows], x[rows], B[rows], C[rows],
                                             dt[rows])
        state.seqlen_offset += t
        state.drop_cache_if_done()
        return self.out_proj(y)

    def _prefill_rows(self, state, rows, o, z, x, B, C, dt) -> torch.Tensor:
        """Rows `rows` (long indices, or None for every row: views instead of gathered copies), all at
        position o, consume t tokens: [o, P) by attention, [max(o, P), o+t) by SSD."""
        P, t = state.transpoint, x.shape[1]
        n_att = max(0, min(P - o, t))
        idx = slice(None) if rows is None else rows
        parts = []
        if n_att > 0:
            end = o + n_att
            state.ensure_capacity(end)
            state.kv_B[idx, o:end] = B[:, :n_att].to(state.kv_B.dtype)
            state.kv_x[idx, o:end] = x[:, :n_att].to(state.kv_x.dtype)
            state.kv_dt[idx, o:end] = dt[:, :n_att].to(state.kv_dt.dtype)
            q = self._rotate(C[:, :n_att], torch.arange(o, end, device=C.device))
            k = self._rotate(state.kv_B[idx, :end], torch.arange(end, device=C.device))
            att = self._attend(q, k, state.kv_x[idx, :end], q_start=o)
            parts.append(self._attention_out(att, x[:, :n_att]))
        if n_att < t:
            all_rows = torch.arange(state.batch_size, device=x.device) if rows is None else rows
            todo = all_rows[~state.converted[idx]]
            if todo.numel():
                self.convert_rows(state, todo)
            y, final = self._ssd(x[:, n_att:], dt[:, n_att:], B[:, n_att:], C[:, n_att:],
                                 initial_state=state.ssm_state[idx], return_final_state=True)
            state.ssm_state[idx] = final.to(state.ssm_state.dtype)
            parts.append(self._ssm_out(y, z[:, n_att:]))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def step_mode(self, positions: list[int]) -> str:
        """The decode mode for rows at `positions` (host ints) against this layer's TransPoint P: "attn" when
        every row is before P, "ssm" when every row is at or past P, else "mixed"."""
        P = self.transpoint
        before = sum(1 for p in positions if p < P)
        return "attn" if before == len(positions) else "ssm" if before == 0 else "mixed"

    def prepare_step(self, state: TransMambaState, positions: list[int] | None = None) -> str:
        """Eager bookkeeping before a `step` (reads the positions, when not given, and the converted flags
        from the device): converts the rows at or past P that are not converted yet, grows the KV buffers
        for the rows before P, frees them once every row is at or past P, and returns the step's mode."""
        self._check_tm_state(state, state.batch_size)
        positions = state.seqlen_offset.tolist() if positions is None else positions
        P = state.transpoint
        if state.kv_B is not None and any(p >= P for p in positions):  # (no cache left: all converted)
            rows = ((state.seqlen_offset >= P) & ~state.converted).nonzero().squeeze(1)
            if rows.numel():
                self.convert_rows(state, rows)
        before = [p for p in positions if p < P]
        if before:
            state.ensure_capacity(max(before) + 1)
        mode = self.step_mode(positions)
        if mode == "ssm":
            state.drop_cache_if_done()
        return mode

    def step(self, hidden: torch.Tensor, state: TransMambaState, *, mode: str | None = None,
             A: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
        """One token per row: hidden (b, D) -> (b, D), in `mode` ("attn" | "ssm" | "mixed"); updates `state`.

        attn:  K = B, V = x and dt of this token stored at slot seqlen_offset[row];
               y = softmax(C·K/√N) V (+ D x), ungated RMSNorm (attn_rope rotates C at the row's position and
               every cached B at its slot's; attn_d_skip / attn_norm drop the D skip / the norm).
        ssm:   S' = exp(dt A) S + dt x Bᵀ, y = S' C + D x, gated RMSNorm (on CUDA conv + SSD step + norm in
               one kernel).
        mixed: both for every row; a row at or past P keeps the SSM result and the new SSM state (its KV
               write goes to the last slot, which it never reads again), a row before P the attention one.

        With a mode the step is static: attention runs over the whole KV buffer with the lengths on the
        device, no host sync, so it can be captured in a CUDA graph; rows at or past P must already be
        converted (`convert_rows`) and rows before P need room in the KV buffer. mode=None (eager use):
        `prepare_step` does that bookkeeping and picks the mode. A: from `step_constants`. reduce=False lets
        out_proj return its fp32 split-K partial sums on CUDA (no bias only), for `layers.norm.add_norm`.
        """
        check_shape(type(self).__name__, "hidden", hidden, (None, self.d_model))
        b = hidden.shape[0]
        self._check_tm_state(state, b)
        if mode is None:
            mode = self.prepare_step(state)
        elif mode not in STEP_MODES:
            raise ValueError(f"TransMamba.step: mode must be one of {STEP_MODES}, got {mode!r}")
        reduce = reduce or self.out_proj.bias is not None
        zxbcdt = skinny_linear(hidden, self.in_proj)
        if mode == "ssm" and self._fused_step_ok(state):  # the whole SSM path in one kernel on CUDA
            y = self._fused_ssm_step(zxbcdt, state, self.A if A is None else A)  # advances seqlen_offset
            return skinny_linear(y, self.out_proj, reduce=reduce)
        z, xbc, dt = self.split_proj(zxbcdt)
        xbc, conv_new = causal_conv1d_update(xbc, state.conv_state, self.conv_weight(), self.conv1d.bias,
                                             activation=self.conv_activation)
        state.conv_state.copy_(conv_new)
        x, B, C = self.split_xbc(xbc)  # (b, h, p), (b, g, n), (b, g, n)
        pos = state.seqlen_offset
        y_att = y_ssm = None
        if mode != "ssm":
            if state.kv_B is None:
                raise ValueError(f"TransMamba.step: mode {mode!r} needs the KV cache, but it was dropped "
                                 "(every row converted)")
            cap = state.kv_B.shape[1]
            slot = pos.clamp(max=cap - 1)
            rows = torch.arange(b, device=hidden.device)
            state.kv_B[rows, slot] = B.to(state.kv_B.dtype)
            state.kv_x[rows, slot] = x.to(state.kv_x.dtype)
            state.kv_dt[rows, slot] = dt.to(state.kv_dt.dtype)
            g, h, p = self.ngroups, self.nheads, self.headdim
            values = state.kv_x.reshape(b, cap, g, (h // g) * p)  # a group's heads as one value of width r·p
            q, keys = C.to(state.kv_B.dtype), state.kv_B
            if self.attn_rope:  # the cache keeps B unrotated (the converter needs it), so every key is
                # rotated at its slot's position each step and the query at the row's position
                q = rope_decode(q, pos, rope_frequencies(self.d_state, self.rope_base, hidden.device))
                slots = torch.arange(cap, device=hidden.device)
                keys = apply_rope(keys, slots, self.rope_base).to(keys.dtype)
            att = decode_attention(q, keys, values, (pos + 1).clamp(max=cap),
                                   scale=1.0 / math.sqrt(self.d_state))  # (b, g, r·p)
            y_att = self._attention_out(att.reshape(b, h, p).to(x.dtype), x)
        if mode != "attn":
            A = self.A if A is None else A
            if mode == "ssm":
                ys = ssd_step_inplace(state.ssm_state, x, dt, A, B, C, self.D, self.dt_bias)
            else:  # rows before P keep their (unused, zero) state
                ys, new = ssd_step(state.ssm_state, x, dt, A, B, C, D=self.D, dt_bias=self.dt_bias,
                                   dt_softplus=True)
                state.ssm_state.copy_(torch.where((pos >= state.transpoint)[:, None, None, None],
                                                  new.to(state.ssm_state.dtype), state.ssm_state))
            y_ssm = self._ssm_out(ys, z)
        if y_att is None:
            y = y_ssm
        elif y_ssm is None:
            y = y_att
        else:
            y = torch.where((pos < state.transpoint)[:, None], y_att, y_ssm.to(y_att.dtype))
        state.seqlen_offset += 1
        return skinny_linear(y, self.out_proj, reduce=reduce)

    def extra_repr(self) -> str:
        extra = f", attn_rope=True, rope_base={self.rope_base}" if self.attn_rope else ""
        extra += "" if self.attn_norm else ", attn_norm=False"
        return f"{super().extra_repr()}, transpoint={self.transpoint}, attn_d_skip={self.attn_d_skip}{extra}"


__all__ = ["STEP_MODES", "TransMamba", "position_in_document"]
