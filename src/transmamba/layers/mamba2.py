"""The Mamba-2 mixer (parameter names, shapes and init as mamba_ssm's `Mamba2`).

    zxbcdt = in_proj(u)                          (b, t, 2*d_inner + 2*G*N + H)  =  [z | x | B | C | dt]
    xBC    = silu(causal_conv1d(xBC))            depthwise, width d_conv, never across documents (seq_idx)
    y      = SSD(x, dt, A=-exp(A_log), B, C)     h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_tᵀ,
                                                 y_t = h_t C_t + D x_t,  dt_t = softplus(dt_t + dt_bias)
    out    = out_proj(rms_norm(y * silu(z)))     RMSNorm per group of d_inner / G channels, gate first

H = d_inner / headdim heads of size P = headdim; G = ngroups groups of B/C (state size N), head i reads
group i // (H / G). The state dict has mamba_ssm's mixer keys: in_proj.weight, conv1d.weight (conv_dim, 1,
d_conv), conv1d.bias, dt_bias, A_log, D, norm.weight, out_proj.weight (+ biases with bias=True).

`dt_limit=(low, high)` clamps the step size after the softplus, dt_t = clamp(softplus(dt_t + dt_bias),
low, high) (HF transformers' `time_step_limit`; mamba_ssm's `dt_limit`), in the forward and in `step` alike.

`step` decodes one token per row with the states updated in place and no host sync (CUDA-graph capturable);
on CUDA everything between in_proj and out_proj (conv update, SSD step, gated RMSNorm) is one kernel
(`ops/ssm_decode/triton.py`) and the linears go through `ops.skinny_linear`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transmamba.layers.norm import RMSNormGated
from transmamba.layers.ssm_state import Mamba2State
from transmamba.ops import backend
from transmamba.ops.checks import check_shape
from transmamba.ops.conv import causal_conv1d, causal_conv1d_split, causal_conv1d_update
from transmamba.ops.skinny_linear import skinny_linear
from transmamba.ops.ssd import ssd, ssd_step
from transmamba.ops.ssd.args import DEFAULT_CHUNK_SIZE


def ssd_step_inplace(state: torch.Tensor, x, dt, A, B, C, D, dt_bias,
                     dt_softplus: bool = True) -> torch.Tensor:
    """`ops.ssd_step` writing the new state into `state` (b, h, p, n) (one kernel on CUDA); returns
    y (b, h, p)."""
    if backend.use_triton_inplace(state):
        from transmamba.ops.ssd.triton import ssd_step_triton

        return ssd_step_triton(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                               inplace=True)[0]
    y, new = ssd_step(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus)
    state.copy_(new)
    return y


def _positive_int(op: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    return value


class Mamba2(nn.Module):
    """Mamba-2 token mixer: `forward(hidden (b, t, d_model), *, seq_idx=None, state=None) -> (b, t, d_model)`.

    Args mirror mamba_ssm's `Mamba2` (d_inner = expand * d_model must be divisible by headdim, ngroups must
    divide the number of heads). `chunk_size` is the SSD chunk length (a speed knob; results do not depend on
    it). With `state` (from `init_state`) the call is a prefill that continues from the state and updates it;
    `step` decodes one token per row.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        norm_eps: float = 1e-5,
        bias: bool = False,
        conv_bias: bool = True,
        dt_limit: tuple[float, float] | None = None,
        conv_activation: str | None = "silu",
        device=None,
        dtype=None,
    ):
        super().__init__()
        op = type(self).__name__
        if dt_limit is not None:
            lo_dt, hi_dt = (float(v) for v in dt_limit)
            if not 0 <= lo_dt <= hi_dt:
                raise ValueError(f"{op}: dt_limit must be (low, high), 0 <= low <= high, got {dt_limit!r}")
            dt_limit = None if (lo_dt, hi_dt) == (0.0, math.inf) else (lo_dt, hi_dt)
        self.dt_limit = dt_limit
        if conv_activation not in ("silu", None):
            raise ValueError(f"{op}: conv_activation must be 'silu' or None, got {conv_activation!r}")
        self.conv_activation = conv_activation  # None: xBC = conv(xBC) (a Transformer converted to T)
        self.d_model = _positive_int(op, "d_model", d_model)
        self.d_state = _positive_int(op, "d_state", d_state)
        self.d_conv = _positive_int(op, "d_conv", d_conv)
        self.headdim = _positive_int(op, "headdim", headdim)
        self.ngroups = _positive_int(op, "ngroups", ngroups)
        self.chunk_size = _positive_int(op, "chunk_size", chunk_size)
        if expand <= 0:
            raise ValueError(f"{op}: expand must be positive, got {expand!r}")
        self.expand = expand
        d_inner = expand * d_model
        if d_inner != int(d_inner):
            raise ValueError(f"{op}: d_inner = expand*d_model = {d_inner} must be an integer")
        self.d_inner = d_inner = int(d_inner)
        if d_inner % headdim:
            raise ValueError(
                f"{op}: d_inner={d_inner} (expand*d_model) must be divisible by headdim={headdim}"
            )
        self.nheads = d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"{op}: ngroups={ngroups} must divide the number of heads nheads={self.nheads}")
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"{op}: A_init_range must satisfy 0 < low <= high, got {A_init_range!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"{op}: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.A_init_range = (float(lo), float(hi))
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.norm_eps = norm_eps

        fk = {"device": device, "dtype": dtype}
        self.conv_dim = d_inner + 2 * ngroups * d_state  # channels of xBC
        d_in_proj = 2 * d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **fk)
        # depthwise conv; we call ops.conv with its (conv_dim, d_conv) weight, `padding` mirrors mamba_ssm
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, d_conv,
            groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias, **fk,
        )
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, **fk))
        self.A_log = nn.Parameter(torch.empty(self.nheads, **fk))
        self.D = nn.Parameter(torch.empty(self.nheads, **fk))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = RMSNormGated(d_inner, eps=norm_eps, group_size=d_inner // ngroups, **fk)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **fk)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's init of the SSM scalars (in_proj / conv1d / out_proj keep torch's default init).

        dt ~ log-uniform on [dt_min, dt_max], floored at dt_init_floor; dt_bias = softplus⁻¹(dt) so that
        softplus(0 + dt_bias) = dt at init. A ~ uniform on A_init_range, stored as A_log = log A. D = 1.
        """
        h, dev = self.nheads, self.dt_bias.device
        log_lo, log_hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(h, device=dev))
        dt = dt.clamp(min=self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt) = log(exp(dt) - 1)
        self.A_log.copy_(torch.empty(h, device=dev).uniform_(*self.A_init_range).log())
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    # ----------------------------------------------------------------------------------------- pieces
    @property
    def A(self) -> torch.Tensor:
        """A = -exp(A_log), (h,), in fp32."""
        return -torch.exp(self.A_log.float())

    def conv_weight(self) -> torch.Tensor:
        """The depthwise conv weight as ops.conv wants it: (conv_dim, d_conv)."""
        return self.conv1d.weight.squeeze(1)

    def dt_args(self, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """(dt, dt_bias, dt_softplus) for the SSD ops: the raw dt with the bias and softplus left to the op,
        or with `dt_limit` the clamped step size clamp(softplus(dt + dt_bias), low, high) already applied."""
        if self.dt_limit is None:
            return dt, self.dt_bias, True
        eff = torch.nn.functional.softplus(dt.float() + self.dt_bias.float())
        return eff.clamp(*self.dt_limit).to(dt.dtype), None, False

    def split_proj(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., d_in_proj) -> z (..., d_inner), xBC (..., conv_dim), dt (..., h)."""
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def split_xbc(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., conv_dim) -> x (..., h, p), B (..., g, n), C (..., g, n)."""
        gn = self.ngroups * self.d_state
        x, B, C = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        lead = xbc.shape[:-1]
        return (
            x.reshape(*lead, self.nheads, self.headdim),
            B.reshape(*lead, self.ngroups, self.d_state),
            C.reshape(*lead, self.ngroups, self.d_state),
        )

    def project_and_conv(
        self, hidden: torch.Tensor, seq_idx: torch.Tensor | None, conv_state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden (b, t, D) -> z (b,t,d_inner), x (b,t,h,p), B, C (b,t,g,n), dt (b,t,h), conv final state.

        Without `conv_state` (training, plain forward) the split and the conv run as one step
        (`causal_conv1d_split`: on CUDA x, B, C come out contiguous and the backward writes one gradient
        for in_proj's output); the conv final state is then None."""
        zxbcdt = self.in_proj(hidden)
        if conv_state is None:
            g, n = self.ngroups, self.d_state
            sizes = (self.d_inner, self.d_inner, g * n, g * n, self.nheads)
            z, x, B, C, dt = causal_conv1d_split(
                zxbcdt, self.conv_weight(), self.conv1d.bias, sizes, activation=self.conv_activation,
                seq_idx=seq_idx,
            )
            lead = zxbcdt.shape[:-1]
            x = x.reshape(*lead, self.nheads, self.headdim)
            return z, x, B.reshape(*lead, g, n), C.reshape(*lead, g, n), dt, None
        z, xbc, dt = self.split_proj(zxbcdt)
        xbc, conv_final = causal_conv1d(
            xbc.transpose(1, 2),
            self.conv_weight(),
            self.conv1d.bias,
            activation=self.conv_activation,
            seq_idx=seq_idx,
            initial_state=conv_state,
            return_final_state=True,
        )
        x, B, C = self.split_xbc(xbc.transpose(1, 2))
        return z, x, B, C, dt, conv_final

    def check_hidden(self, hidden: torch.Tensor, seq_idx: torch.Tensor | None) -> None:
        op = type(self).__name__
        check_shape(op, "hidden", hidden, (None, None, self.d_model))
        if seq_idx is not None:
            check_shape(op, "seq_idx", seq_idx, hidden.shape[:2])

    def check_state(self, state, batch: int, cls: type) -> None:
        op = type(self).__name__
        if not isinstance(state, cls):
            raise ValueError(
                f"{op}: state must be a {cls.__name__} (from init_state), got {type(state).__name__}"
            )
        if state.batch_size != batch:
            raise ValueError(f"{op}: state has batch {state.batch_size}, hidden has batch {batch}")

    # ----------------------------------------------------------------------------------------- interface
    def forward(
        self, hidden: torch.Tensor, *, seq_idx: torch.Tensor | None = None, state: Mamba2State | None = None
    ) -> torch.Tensor:
        """hidden (b, t, D) -> (b, t, D). With `state`: prefill continuing from it, updating it in place."""
        self.check_hidden(hidden, seq_idx)
        b, t, _ = hidden.shape
        if state is not None:
            self.check_state(state, b, Mamba2State)
        z, x, B, C, dt, conv_final = self.project_and_conv(
            hidden, seq_idx, None if state is None else state.conv_state
        )
        dt, dt_bias, dt_softplus = self.dt_args(dt)
        out = ssd(
            x, dt, self.A, B, C,
            chunk_size=self.chunk_size,
            D=self.D,
            dt_bias=dt_bias,
            dt_softplus=dt_softplus,
            initial_state=None if state is None else state.ssm_state,
            return_final_state=state is not None,
            seq_idx=seq_idx,
        )
        if state is not None:
            y, final = out
            state.conv_state.copy_(conv_final)
            state.ssm_state.copy_(final)
            state.seqlen_offset += t
        else:
            y = out
        y = self.norm(y.reshape(b, t, self.d_inner), z)
        return self.out_proj(y)

    def step_constants(self) -> dict[str, torch.Tensor]:
        """What every decode step would recompute from the weights: {"A": -exp(A_log), (h,) fp32}. Pass it to
        `step` as a keyword; made once per decoder, so the weights must not change meanwhile."""
        return {"A": self.A.detach()}

    def _fused_step_ok(self, state) -> bool:
        """Whether `ops/ssm_decode/triton.py` can run this layer's SSM step on `state` (CUDA, defaults)."""
        return (backend.use_triton_inplace(state.ssm_state) and self.D.dim() == 1 and self.d_conv >= 2
                and self.conv_activation == "silu"  # the fused kernel applies SiLU after the conv
                and self.norm.group_size == self.d_inner // self.ngroups
                and self.dt_limit is None and self.conv1d.bias is not None)

    def _fused_ssm_step(self, zxbcdt: torch.Tensor, state, A: torch.Tensor) -> torch.Tensor:
        """conv update + SSD step + gated RMSNorm of one token in one launch: zxbcdt (b, d_in_proj) ->
        (b, d_inner) for out_proj. Also advances state.seqlen_offset by one (in the same launch)."""
        from transmamba.ops.ssm_decode.triton import mamba2_decode_triton

        seq = state.seqlen_offset
        inc = seq.dim() == 1 and seq.is_contiguous()
        y = mamba2_decode_triton(zxbcdt, state.conv_state, self.conv_weight(), self.conv1d.bias,
                                 state.ssm_state, A, self.dt_bias, self.D, self.norm.weight, self.norm.eps,
                                 self.ngroups, self.headdim, seqlen_offset=seq if inc else None)
        if not inc:
            state.seqlen_offset += 1
        return y

    def step(self, hidden: torch.Tensor, state: Mamba2State, *, A: torch.Tensor | None = None,
             reduce: bool = True) -> torch.Tensor:
        """One token per row: hidden (b, D) -> (b, D); updates `state` in place.

            xBC_t = silu(conv(conv_state, xBC_t)),   S' = exp(dt A) S + dt x Bᵀ,   y = S' C + D x
            out = out_proj(rms_norm(y * silu(z)))

        Static (no host sync, fixed shapes: CUDA-graph capturable). A: from `step_constants` (computed here
        when None). reduce=False lets out_proj return its fp32 split-K partial sums (S, b, D) on CUDA (no
        bias only), for `layers.norm.add_norm` to sum."""
        check_shape(type(self).__name__, "hidden", hidden, (None, self.d_model))
        b = hidden.shape[0]
        self.check_state(state, b, Mamba2State)
        A = self.A if A is None else A
        zxbcdt = skinny_linear(hidden, self.in_proj)
        reduce = reduce or self.out_proj.bias is not None
        if self._fused_step_ok(state):
            y = self._fused_ssm_step(zxbcdt, state, A)  # advances seqlen_offset
            return skinny_linear(y, self.out_proj, reduce=reduce)
        z, xbc, dt = self.split_proj(zxbcdt)
        xbc, conv_new = causal_conv1d_update(xbc, state.conv_state, self.conv_weight(), self.conv1d.bias,
                                             activation=self.conv_activation)
        state.conv_state.copy_(conv_new)
        x, B, C = self.split_xbc(xbc)
        dt, dt_bias, dt_softplus = self.dt_args(dt)  # dt_limit, when the layer has one, applied here
        y = ssd_step_inplace(state.ssm_state, x, dt, A, B, C, self.D, dt_bias, dt_softplus)
        state.seqlen_offset += 1
        return skinny_linear(self.norm(y.reshape(b, self.d_inner), z), self.out_proj, reduce=reduce)

    def _state_tensors(self, batch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        return (
            torch.zeros(batch, dtype=torch.long, device=device),
            torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=dtype),
        )

    def init_state(self, batch: int, *, max_len: int | None = None, device=None, dtype=None) -> Mamba2State:
        """A fresh state (position 0) for `batch` rows; `max_len` is unused (the state is O(1) in length)."""
        offset, conv, ssm_state = self._state_tensors(batch, device, dtype)
        return Mamba2State(seqlen_offset=offset, conv_state=conv, ssm_state=ssm_state)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, nheads={self.nheads}, "
            f"headdim={self.headdim}, ngroups={self.ngroups}, d_conv={self.d_conv}, "
            f"chunk_size={self.chunk_size}"
        )


__all__ = ["Mamba2"]
