"""The Mamba-1 mixer (parameter names, shapes and init as mamba_ssm's simple `Mamba` module).

    x, z   = in_proj(u).chunk(2)                 (b, t, d_inner) each, d_inner = expand · d_model
    x      = silu(conv1d(x))                      depthwise causal conv, width d_conv, never across documents
    dt|B|C = x_proj(x)                            sizes dt_rank, d_state, d_state
    Δ      = softplus(dt_proj(dt))                (b, t, d_inner); dt_proj's bias enters as delta_bias
    y      = selective_scan(x, Δ, A=-exp(A_log), B, C, D) · silu(z)
    out    = out_proj(y)

Parameters: in_proj (d_model -> 2·d_inner), conv1d (nn.Conv1d depthwise, weight (d_inner, 1, d_conv), bias),
x_proj (d_inner -> dt_rank + 2·d_state, no bias), dt_proj (dt_rank -> d_inner, with bias), A_log (d_inner,
d_state), D (d_inner,), out_proj (d_inner -> d_model). dt_rank = ceil(d_model / 16) for "auto".

Init (mamba_ssm): dt_proj.weight ~ U(-s, s) with s = dt_scale / sqrt(dt_rank) ("random") or = s ("constant");
dt ~ log-uniform on [dt_min, dt_max] floored at dt_init_floor, dt_proj.bias = softplus⁻¹(dt);
A_log[d, n] = log(n + 1) (S4D-real); D = 1; the rest torch's default. A_log, D carry `_no_weight_decay`,
dt_proj.bias `_no_reinit`.

`inner_layernorms=True` adds Jamba's RMSNorms on the x_proj outputs before use (dt before dt_proj, B, C),
named as in Hugging Face's Jamba: `dt_layernorm` (dt_rank), `b_layernorm`, `c_layernorm` (d_state).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.layers.norm import RMSNorm
from transmamba.layers.state import Mamba1State
from transmamba.ops.checks import check_shape
from transmamba.ops.conv import causal_conv1d, causal_conv1d_update
from transmamba.ops.selective_scan import selective_scan, selective_state_update


class Mamba1(nn.Module):
    """Mamba-1 token mixer: `forward(hidden (b, t, d_model), *, seq_idx=None, state=None) -> (b, t, d_model)`.

    `scan_impl` picks the scan ("auto" | "ref" | "chunked" | "triton"; "auto" is the Triton kernel on CUDA,
    else the chunked torch scan); `chunk_size` is the chunked scan's chunk length (None: ~sqrt(t)). With
    `state` (from `init_state`) the call is a prefill continuing from it (updated in place); `step` decodes
    one token per row.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_impl: str = "auto",
        chunk_size: int | None = None,
        inner_layernorms: bool = False,
        norm_eps: float = 1e-6,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Mamba1: {name} must be a positive int, got {value!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba1: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba1: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = d_inner = int(expand * d_model)
        if d_inner <= 0 or d_inner != expand * d_model:
            raise ValueError(f"Mamba1: d_inner = expand*d_model = {expand * d_model} must be a positive int")
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max, self.dt_init, self.dt_scale = dt_min, dt_max, dt_init, dt_scale
        self.dt_init_floor = dt_init_floor
        self.scan_impl, self.chunk_size = scan_impl, chunk_size

        fk = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias, **fk)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias, **fk
        )
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True, **fk)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state, **fk))
        self.D = nn.Parameter(torch.empty(d_inner, **fk))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.dt_proj.bias._no_reinit = True
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **fk)
        self.inner_layernorms = inner_layernorms
        if inner_layernorms:
            self.dt_layernorm = RMSNorm(self.dt_rank, eps=norm_eps, **fk)
            self.b_layernorm = RMSNorm(d_state, eps=norm_eps, **fk)
            self.c_layernorm = RMSNorm(d_state, eps=norm_eps, **fk)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's init of dt_proj, A_log and D (see the module docstring)."""
        std = self.dt_rank**-0.5 * self.dt_scale
        if self.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        dev = self.dt_proj.bias.device
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(lo + (hi - lo) * torch.rand(self.d_inner, device=dev)).clamp(min=self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=dev).expand(self.d_inner, -1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    @property
    def A(self) -> torch.Tensor:
        """A = -exp(A_log), (d_inner, d_state), fp32."""
        return -torch.exp(self.A_log.float())

    def conv_weight(self) -> torch.Tensor:
        """The depthwise conv weight as ops.conv wants it: (d_inner, d_conv)."""
        return self.conv1d.weight.squeeze(1)

    def _check_state(self, state, batch: int) -> None:
        if not isinstance(state, Mamba1State):
            raise ValueError(
                f"Mamba1: state must be a Mamba1State (from init_state), got {type(state).__name__}"
            )
        if state.batch_size != batch:
            raise ValueError(f"Mamba1: state has batch {state.batch_size}, hidden has batch {batch}")

    def _dt_B_C(self, x: torch.Tensor):
        """x (..., d_inner) -> dt (..., d_inner) before bias/softplus, B, C (..., d_state)."""
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.inner_layernorms:
            dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(
        self, hidden: torch.Tensor, *, seq_idx: torch.Tensor | None = None, state: Mamba1State | None = None
    ) -> torch.Tensor:
        """hidden (b, t, d_model) -> (b, t, d_model). With `state`: a prefill continuing it (in place)."""
        check_shape("Mamba1", "hidden", hidden, (None, None, self.d_model))
        b, t, _ = hidden.shape
        if seq_idx is not None:
            check_shape("Mamba1", "seq_idx", seq_idx, (b, t))
        if state is not None:
            self._check_state(state, b)
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, t, d_inner) each
        conv = causal_conv1d(
            x.transpose(1, 2),
            self.conv_weight(),
            self.conv1d.bias,
            activation="silu",
            seq_idx=seq_idx,
            initial_state=None if state is None else state.conv_state,
            return_final_state=state is not None,
        )
        x, conv_final = conv if state is not None else (conv, None)  # x (b, d_inner, t)
        dt, B, C = self._dt_B_C(x.transpose(1, 2))
        out = selective_scan(
            x,
            dt.transpose(1, 2),
            self.A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=self.D,
            z=z.transpose(1, 2),
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            return_last_state=state is not None,
            seq_idx=seq_idx,
            initial_state=None if state is None else state.ssm_state,
            impl=self.scan_impl,
            chunk_size=self.chunk_size,
        )
        if state is not None:
            y, last = out
            state.conv_state.copy_(conv_final)
            state.ssm_state.copy_(last)
            state.seqlen_offset += t
        else:
            y = out
        return self.out_proj(y.transpose(1, 2))

    def step(self, hidden: torch.Tensor, state: Mamba1State) -> torch.Tensor:
        """One token per row: hidden (b, d_model) -> (b, d_model); updates `state` in place."""
        check_shape("Mamba1", "hidden", hidden, (None, self.d_model))
        b = hidden.shape[0]
        self._check_state(state, b)
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, d_inner)
        x, conv_new = causal_conv1d_update(
            x, state.conv_state, self.conv_weight(), self.conv1d.bias, activation="silu"
        )
        dt, B, C = self._dt_B_C(x)
        y, _ = selective_state_update(
            state.ssm_state, x, dt, self.A, B, C, D=self.D, z=z, dt_bias=self.dt_proj.bias, dt_softplus=True,
            inplace=True,
        )  # the SSM state is updated in place
        state.conv_state.copy_(conv_new)
        state.seqlen_offset += 1
        return self.out_proj(y)

    def init_state(self, batch: int, *, max_len: int | None = None, device=None, dtype=None) -> Mamba1State:
        """A fresh state for `batch` rows; `max_len` is unused (the state is O(1) in length). The SSM state is
        fp32 unless `dtype` is fp64."""
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return Mamba1State.empty(
            batch, self.d_inner, self.d_conv, self.d_state, device=device, dtype=dtype, ssm_dtype=ssm_dtype
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, inner_layernorms={self.inner_layernorms}"
        )
