"""Triton selective scan (Mamba-1): `selective_scan_triton` (forward + backward, an autograd Function) and
`selective_state_update_triton` (one decode token, optionally in place).

Same arguments and results as `transmamba.ops.selective_scan.selective_scan_ref` (the sequential torch
recurrence is the spec); the recurrence and the backward formulas are in `triton_kernels.py`.
Forward: one launch (two more when time is split into segments); each program owns (batch row, BD
channels, time segment), walks time in tiles of TT tokens with the state (BD, n) in registers and one
`tl.associative_scan` per tile, and saves the state entering every tile (fp32 (b, l/TT, d, n): n/TT
values per token and channel, 2 at d_state 16 and TT 8). Backward: one launch walking the tiles in reverse
(states recomputed from those checkpoints, a reverse scan for dL/dh; two more launches with segments) plus
torch sums of per-program partials for dA, dD and delta_bias. dB and dC are relaxed atomic fp32 adds over
the channel blocks of a group (so their low bits vary from run to run).

Any strides for u, delta, z and B, C (the Mamba1 layer passes channel-last views; nothing is copied), fp32
compute throughout (no tensor-core dots), outputs in u's dtype, the final state fp32. fp64 inputs go to the
torch chunked scan.
"""

from __future__ import annotations

import torch
import triton

from transmamba.ops.selective_scan import triton_kernels as K
from transmamba.ops.selective_scan.args import _check_args
from transmamba.ops.selective_scan.chunked import selective_scan_chunked

__all__ = ["selective_scan_triton", "selective_state_update_triton", "CONFIG"]

# Launch settings. TT (tokens per tile) is shared by forward and backward: the forward checkpoints the
# state at every tile start. `experiments/scan_tune.py` sweeps them. The n-major (TT, n, BD) tiles won
# against time-major (TT, BD, n) ones on an H100 at b=4, L=4096, d=2048, n=16, bf16: fwd 0.75 vs 1.48 ms,
# fwd+bwd 3.4 vs 10.8 ms (docs/performance.md); the time-major kernels were removed.
CONFIG: dict[str, dict[str, int]] = {
    "tile": dict(TT=8),  # TT = 16: fwd+bwd 5.2 ms (n-major); TT >= 32 spills registers
    # stages > 1: software-pipelined tile loads (tl.range); prefetch=1 (n-major, one group per channel
    # block): the next tile's loads are issued before the current tile's arithmetic (H100: fwd
    # 0.74 -> 0.58 ms at b=4, L=4096 and 1.17 -> 1.00 ms at b=1, L=16384; outputs bit-identical)
    "fwd": dict(BD=8, warps=1, stages=1, prefetch=1),
    "bwd": dict(BD=8, warps=1, stages=1),
    "step": dict(BD=32, warps=4),
    # time segments: when the b * cdiv(d, BD) programs have fewer than `warps` warps in all, time is also
    # split into segments of at least `min_tiles` tiles (an extra state-only pass + a carry pass, see the
    # kernels' docstring); warps=0 turns the split off. At b=4, L=4096 (1024 warps) a 4-way split cost
    # fwd 0.75 -> 0.90 ms, so it is kept for fewer warps than that.
    "seg": dict(warps=1024, min_tiles=16),
}


def _p2(v: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(int(v)))


def _strides(x: torch.Tensor | None) -> tuple[int, ...]:
    return x.stride() if x is not None else (0, 0, 0)


def _bc4(X: torch.Tensor) -> torch.Tensor:
    """B or C as a (b, g, n, l) view."""
    return X.unsqueeze(1) if X.dim() == 3 else X


class _Cfg:
    def __init__(self, u, A, B4, seq_idx, bd: int, warps: int):
        self.b, self.d, self.l = u.shape
        self.n = A.shape[1]
        self.g = B4.shape[1]
        self.dpg = self.d // self.g
        self.TT = _p2(min(CONFIG["tile"]["TT"], _p2(self.l, 8)), 8)
        self.nt = triton.cdiv(self.l, self.TT)
        self.BN = _p2(self.n)
        self.BD = bd
        self.nd = triton.cdiv(self.d, bd)
        self.same_group = self.dpg % bd == 0
        self.has_seq = seq_idx is not None
        self.seq = seq_idx if seq_idx is not None else u
        self.seq_strides = (seq_idx.stride(0), seq_idx.stride(1)) if seq_idx is not None else (0, 0)
        # time segments (tiles per segment tps, nseg segments)
        want, min_tiles = CONFIG["seg"]["warps"], max(1, CONFIG["seg"]["min_tiles"])
        nseg = 1
        have = self.b * self.nd * warps
        if want and have < want:
            nseg = max(1, min(triton.cdiv(want, have), self.nt // min_tiles))
        self.tps = triton.cdiv(self.nt, nseg)
        self.nseg = triton.cdiv(self.nt, self.tps)

    def grid(self):
        return (self.b, self.nd, self.nseg)


def _seg_pass(cfg, P, H, init, reverse):
    """States entering each segment, (b, nseg, d, n) fp32, from the per-segment maps h -> P h + H."""
    E = torch.empty_like(P)
    size = cfg.d * cfg.n
    BS = 1024
    K.seg_pass_kernel[(cfg.b, triton.cdiv(size, BS))](
        P, H, init if init is not None else P, E, size, cfg.nseg,
        HAS_INIT=init is not None, REVERSE=reverse, BS=BS, num_warps=4,
    )
    return E


def _fwd(u, delta, A, B4, C4, D, z, bias, softplus, seq_idx, init, store_ckpt):
    c = CONFIG["fwd"]
    cfg = _Cfg(u, A, B4, seq_idx, min(c["BD"], _p2(u.shape[1])), c["warps"])
    dev = u.device
    y = torch.empty_like(u)
    final = torch.empty(cfg.b, cfg.d, cfg.n, device=dev, dtype=torch.float32)
    ckpt = torch.empty(cfg.b, cfg.nt, cfg.d, cfg.n, device=dev, dtype=torch.float32) if store_ckpt else final
    args = (u, delta, A, B4, C4, D if D is not None else A, z if z is not None else u,
            bias if bias is not None else A, cfg.seq)
    tail = (cfg.l, cfg.d, cfg.n, cfg.nt, cfg.tps, cfg.dpg,
            *u.stride(), *delta.stride(), *B4.stride(), *C4.stride(), *_strides(z), *y.stride(),
            *cfg.seq_strides)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus),
                 HAS_SEQ=cfg.has_seq, SAME_GROUP=cfg.same_group, BD=cfg.BD, BN=cfg.BN, TT=cfg.TT,
                 STAGES=c.get("stages", 1), num_warps=c["warps"])
    pf = dict(PREFETCH=bool(c.get("prefetch", 0)) and cfg.same_group)
    h0 = init.view(cfg.b, 1, cfg.d, cfg.n) if init is not None else None
    if cfg.nseg > 1:  # state-only pass per segment, then carry across segments
        P = torch.empty(cfg.b, cfg.nseg, cfg.d, cfg.n, device=dev, dtype=torch.float32)
        H = torch.empty_like(P)
        K.scan_fwd_kernel[cfg.grid()](*args, final, y, final, final, P, H, *tail, HAS_H0=False,
                                      STORE_CKPT=False, STATE_ONLY=True, **flags, **pf)
        h0 = _seg_pass(cfg, P, H, init, reverse=False)
    K.scan_fwd_kernel[cfg.grid()](*args, h0 if h0 is not None else final, y, final, ckpt, final, final,
                                  *tail, HAS_H0=h0 is not None, STORE_CKPT=store_ckpt, STATE_ONLY=False,
                                  **flags, **pf)
    return y, final, (ckpt if store_ckpt else None)


def _bwd(dout, dfinal, u, delta, A, B4, C4, D, z, bias, softplus, seq_idx, ckpt):
    c = CONFIG["bwd"]
    cfg = _Cfg(u, A, B4, seq_idx, min(c["BD"], _p2(u.shape[1])), c["warps"])
    dev = u.device
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dB = torch.zeros(cfg.b, cfg.g, cfg.n, cfg.l, device=dev, dtype=torch.float32)
    dC = torch.zeros_like(dB)
    dA_part = torch.empty(cfg.b, cfg.nseg, cfg.d, cfg.n, device=dev, dtype=torch.float32)
    dD_part = torch.empty(cfg.b, cfg.nseg, cfg.d, device=dev, dtype=torch.float32)
    dbias_part = torch.empty_like(dD_part)
    dinit = torch.empty(cfg.b, cfg.d, cfg.n, device=dev, dtype=torch.float32)
    args = (u, delta, A, B4, C4, D if D is not None else A, z if z is not None else u,
            bias if bias is not None else A, cfg.seq, ckpt, dout)
    outs = (du, ddelta, dz if dz is not None else du, dB, dC, dA_part, dD_part, dbias_part, dinit)
    tail = (cfg.l, cfg.d, cfg.n, cfg.nt, cfg.tps, cfg.dpg,
            *u.stride(), *delta.stride(), *B4.stride(), *C4.stride(), *_strides(z), *dout.stride(),
            *cfg.seq_strides, *du.stride(), *ddelta.stride(), *_strides(dz), *dB.stride()[:3],
            *dC.stride()[:3])
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus),
                 HAS_SEQ=cfg.has_seq, SAME_GROUP=cfg.same_group, BD=cfg.BD, BN=cfg.BN, TT=cfg.TT,
                 STAGES=c.get("stages", 1), num_warps=c["warps"])
    g0 = dfinal.view(cfg.b, 1, cfg.d, cfg.n) if dfinal is not None else None
    if cfg.nseg > 1:  # carry-only reverse pass per segment, then carry across segments (right to left)
        P = torch.empty(cfg.b, cfg.nseg, cfg.d, cfg.n, device=dev, dtype=torch.float32)
        Gs = torch.empty_like(P)
        K.scan_bwd_kernel[cfg.grid()](*args, dinit, *outs, P, Gs, *tail, HAS_G0=False, CARRY_ONLY=True,
                                      **flags)
        g0 = _seg_pass(cfg, P, Gs, dfinal, reverse=True)
    K.scan_bwd_kernel[cfg.grid()](*args, g0 if g0 is not None else dinit, *outs, dinit, dinit, *tail,
                                  HAS_G0=g0 is not None, CARRY_ONLY=False, **flags)
    return du, ddelta, dA_part.sum((0, 1)), dB, dC, dD_part.sum((0, 1)), dz, dbias_part.sum((0, 1)), dinit


class _ScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, init, seq_idx, softplus):
        B4, C4 = _bc4(B), _bc4(C)
        A_ = A.contiguous()
        D_ = D.contiguous() if D is not None else None
        bias = delta_bias.contiguous() if delta_bias is not None else None
        init_ = init.float().contiguous() if init is not None else None
        need = any(ctx.needs_input_grad[:9])
        y, final, ckpt = _fwd(u, delta, A_, B4, C4, D_, z, bias, softplus, seq_idx, init_, store_ckpt=need)
        ctx.softplus = softplus
        ctx.bdims = (B.dim(), C.dim())
        ctx.save_for_backward(u, delta, A_, B, C, D_, z, bias, seq_idx, ckpt)
        ctx.has_init = init is not None
        ctx.init_dtype = init.dtype if init is not None else None
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        u, delta, A, B, C, D, z, bias, seq_idx, ckpt = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(u)
        dfinal = dfinal.float().contiguous() if dfinal is not None else None
        du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = _bwd(
            dout, dfinal, u, delta, A, _bc4(B), _bc4(C), D, z, bias, ctx.softplus, seq_idx, ckpt)
        dB = (dB.squeeze(1) if B.dim() == 3 else dB).to(B.dtype)
        dC = (dC.squeeze(1) if C.dim() == 3 else dC).to(C.dtype)
        return (du, ddelta, dA.to(A.dtype), dB, dC, dD.to(D.dtype) if D is not None else None, dz,
                dbias.to(bias.dtype) if bias is not None else None,
                dinit.to(ctx.init_dtype) if ctx.has_init else None, None, None)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    seq_idx: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
):
    """Mamba-1 selective scan on the GPU; arguments and results as `transmamba.ops.selective_scan`.
    Differentiable in u, delta, A, B, C, D, z, delta_bias and initial_state. Returns y (b, d, l) in u's dtype
    [, last_state (b, d, n) fp32]."""
    if u.dtype == torch.float64 or u.shape[-1] == 0:  # fp64 references and empty inputs stay in torch
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      return_last_state, seq_idx, initial_state=initial_state)
    _check_args("selective_scan_triton", u, delta, A, B, C, D, z, delta_bias, seq_idx, initial_state)
    y, last = _ScanFunction.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx,
                                  bool(delta_softplus))
    return (y, last) if return_last_state else y


@torch.no_grad()
def selective_state_update_triton(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    *,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token (see `transmamba.ops.selective_scan.selective_state_update`): one launch reading the
    state once and writing it once. state (b, d, n), x/dt/z (b, d), A (d, n), B/C (b, n) or (b, g, n).
    With `inplace` the new state overwrites `state` (any strides) and `state` itself is returned; not
    differentiable. Returns y (b, d) in x's dtype, new state in state's dtype."""
    if x.dtype == torch.float64 or state.dtype == torch.float64:
        from transmamba.ops.selective_scan import selective_state_update

        y, new = selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, impl="torch")
        if inplace:
            state.copy_(new)
            return y, state
        return y, new
    b, d = x.shape
    n = A.shape[1]
    B3 = B.unsqueeze(1) if B.dim() == 2 else B
    C3 = C.unsqueeze(1) if C.dim() == 2 else C
    g = B3.shape[1]
    x, dt = x.contiguous(), dt.contiguous()
    z = z.contiguous() if z is not None else None
    B3, C3, A = B3.contiguous(), C3.contiguous(), A.contiguous()
    new = state if inplace else torch.empty_like(state)
    y = torch.empty(b, d, device=x.device, dtype=x.dtype)
    c = CONFIG["step"]
    BD = min(c["BD"], _p2(d))
    K.scan_step_kernel[(b, triton.cdiv(d, BD))](
        state, x, dt, A, B3, C3, D if D is not None else A, z if z is not None else x,
        dt_bias if dt_bias is not None else A, y, new, d, n, d // g,
        *state.stride(), x.stride(0), dt.stride(0), B3.stride(0), B3.stride(1), C3.stride(0), C3.stride(1),
        z.stride(0) if z is not None else 0, *new.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BD=BD, BN=_p2(n), num_warps=c["warps"],
    )
    return y, new
