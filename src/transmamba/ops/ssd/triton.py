# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Triton SSD (Mamba-2): `ssd_triton` (forward + backward, an autograd Function), `ssd_final_state_triton`
(the Memory Converter: state only, no outputs) and `ssd_step_triton` (one decode token).

Same arguments and results as `transmamba.ops.ssd.ssd` (the torch reference is the spec); the algorithm
and the backward formulas are in `triton_kernels.py` (and `triton_kernels_fused.py`).
- forward, 4 launches: chunk cumsum (dt bias / softplus fused); C·B per chunk and group, stored in the
  inputs' 16-bit dtype; chunk states and state passing fused into one sequential walk per (head, state
  tile) (below b·h = CONFIG min_bh: two chunk-parallel passes instead); chunk scan with D and the z gate
  fused, the decay factorised per block so only the diagonal block evaluates exp(a_i - a_j).
- backward, 6 launches + one fill and one small sum: the reverse state walk (fused likewise); dx / ddt;
  dCB with the intra-chunk dA summed over the group's heads; dB/dC state and intra parts in one kernel;
  the ddt / dA / d_bias tail in one kernel. The dx, dCB and dB/dC-state kernels launch on flat grids with
  each chunk's tiles consecutive, so tiles reading the same x / dy / states share them through L2.
Design alternatives measured slower or no faster on the H100 were removed (docs/performance.md); some
kernels still take their compile-time flags (FACTOR, TRIDOT, DA2, WDIAG, NSPLIT, ...), always passed the
values above.
Backward takes the incoming chunk states saved by the forward (SAVE_STATES).
Saved for backward: the inputs, the pre-gate output y when z is given (for dz) and two fp32 (b, h, L)
tensors (dt_eff and the chunk-cumulative log decays).

Compute: matmul operands in the inputs' dtype (bf16 / fp16; fp32 inputs use IEEE fp32 dots, so fp32 results
agree with the fp64 reference to ~1e-6; tf32 dots measured ~1e-3 relative error), accumulation and all decays in fp32; the final state is fp32. The factorised decay,
exp(a_i - a_j) = exp(a_i - a_r) exp(a_r - a_j) with a_r between them, is exact
whenever both factors are representable: always when dt·A <= 0 (a stable SSM, the usual softplus dt and
negative A).
"""

from __future__ import annotations

import torch
import triton

from transmamba.ops.ssd import triton_kernels as K
from transmamba.ops.ssd import triton_kernels_fused as KF
from transmamba.ops.ssd.args import DEFAULT_CHUNK_SIZE

__all__ = ["ssd_triton", "ssd_final_state_triton", "ssd_step_triton", "CONFIG"]

# Launch settings per kernel (block sizes are capped at the chunk length; K-blocks at the row blocks).
# `python experiments/gpu_studies.py --cases ssd-tune` sweeps them.
CONFIG: dict[str, dict[str, int]] = {  # best of the ssd-tune sweeps on an H100 (docs/performance.md)
    "state": dict(BK=32, warps=4, stages=3),  # chunk states / u_c
    "cb": dict(B=128, warps=8, stages=2),  # C·B per chunk and group (128-tiles: 0.07 ms faster at 16 groups
    # than 64-tiles, the same at 1 group)
    "scan": dict(BM=128, BK=32, warps=8, stages=3),  # chunk scan (outputs)
    "dx": dict(BJ=64, BK=32, warps=4, stages=3),  # backward dx / ddt / da
    "dcb": dict(B=64, warps=4, stages=2),  # backward dCB and the intra-chunk dA
    "bcs": dict(BT=64, BN=64, warps=4, stages=2),  # backward state parts of dB, dC
    # fused chunk states + state passing (forward) / u_c + reverse state passing (backward); with fewer than
    # `min_progs` programs (b * h * p/BP * n/BN) the state tile is halved (BN, then BP, down to 32 / 16);
    # with b * h < min_bh the two-pass chunk-parallel kernels run instead (the walk is sequential per head)
    # (measured: at b * h = 64, L = 32K the walks took 0.44 / 0.62 ms against 0.40 / 0.51 ms for the two
    # passes; at b * h = 128, L = 4K 0.07 / 0.10 ms against 0.11 / 0.11 ms)
    "fstate": dict(BP=64, BN=64, BK=64, warps=4, stages=3, min_progs=0, min_bh=128),
    "bstate": dict(BP=64, BN=64, BK=64, warps=4, stages=3, min_progs=0, min_bh=128),
}



# Keep the incoming chunk states (b, c, h, p, n) in the inputs' dtype from forward to backward (about
# p*n/Q elements per token and head: half of x's size at chunk 256, d_state 128, headdim 64) instead of
# recomputing them (one chunk-state and one state-passing launch).
SAVE_STATES = True


def _c(kernel: str, Q: int) -> dict[str, int]:
    """CONFIG[kernel] with block sizes capped at Q."""
    return {k: (min(v, Q) if k not in ("warps", "stages", "min_progs", "min_bh") else v)
            for k, v in CONFIG[kernel].items()}


def _fused_walk(cfg, kernel: str) -> bool:
    """The fused state walk (sequential per head) from b * h >= min_bh; below, two chunk-parallel passes."""
    return cfg.b * cfg.h >= CONFIG[kernel].get("min_bh", 0)


def _walk_tiles(cfg, c) -> tuple[int, int]:
    """(BP, BN) of a fused state walk: the configured tile, halved while there are fewer than min_progs
    programs (the walk is sequential over chunks, so b * h * tiles is all the parallelism there is)."""
    BP, BN = min(c["BP"], cfg.BP), min(c["BN"], cfg.BN)
    while cfg.b * cfg.h * triton.cdiv(cfg.p, BP) * triton.cdiv(cfg.n, BN) < c.get("min_progs", 0):
        if BN > 32:
            BN //= 2
        elif BP > 16:
            BP //= 2
        else:
            break
    return BP, BN


def _grid(n0: int, n1: int, n2: int) -> tuple[int, int, int]:
    """Flat launch grid of a logical (n0, n1, n2) grid, the inner two axes fastest (the kernel's _pids undoes
    it), so the programs that read the same chunk's x / dy / states run together and share them in L2."""
    return (n0 * n1 * n2, 1, 1)


def _p2(v: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(v)))


def _ieee(x: torch.Tensor) -> bool:
    """IEEE fp32 dots for fp32 inputs (tf32 dots measured 1.5e-3 relative error against fp64, IEEE 1.6e-6)."""
    return x.dtype == torch.float32


def _chunk(chunk_size: int, seqlen: int) -> int:
    """Chunk length actually used: a power of two in [16, 256] (results do not depend on it)."""
    q = min(_p2(chunk_size), 256)
    return max(16, min(q, _p2(seqlen)))


class _Cfg:
    """Shapes, block sizes and flags of one call."""

    def __init__(self, x, B, chunk_size, seq_idx):
        self.b, self.l, self.h, self.p = x.shape
        self.g, self.n = B.shape[2], B.shape[3]
        self.Q = _chunk(chunk_size, self.l)
        self.nc = triton.cdiv(self.l, self.Q)
        self.BN = _p2(self.n)
        self.BP = min(64, _p2(self.p))
        self.ieee = _ieee(x)
        self.has_seq = seq_idx is not None
        self.seq_ptr = seq_idx if seq_idx is not None else x  # never read without HAS_SEQ
        self.seq_strides = (seq_idx.stride(0), seq_idx.stride(1)) if seq_idx is not None else (0, 0)


def _cumsum(cfg, dt, A, dt_bias, dt_softplus):
    dev = dt.device
    dt_eff = torch.empty(cfg.b, cfg.h, cfg.nc, cfg.Q, device=dev, dtype=torch.float32)
    dA = torch.empty_like(dt_eff)
    BH = min(_p2(cfg.h, 1), max(1, 4096 // cfg.Q))
    K.chunk_cumsum_kernel[(cfg.b, cfg.nc, triton.cdiv(cfg.h, BH))](
        dt, A, dt_bias if dt_bias is not None else A, dt_eff, dA, cfg.l, cfg.h,
        dt.stride(0), dt.stride(1), dt.stride(2),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), Q=cfg.Q, BH=BH,
    )
    return dt_eff, dA


def _chunk_states(cfg, x, B, dt_eff, dA, seq_idx, reverse=False):
    """Forward: own states of each chunk; reverse (x = dy, B = C): u_c. (b, c, h, p, n) fp32."""
    out = torch.empty(cfg.b, cfg.nc, cfg.h, cfg.p, cfg.n, device=x.device, dtype=torch.float32)
    BN = min(cfg.BN, 128)
    c = _c("state", cfg.Q)
    grid = (cfg.b * cfg.nc * cfg.h, triton.cdiv(cfg.p, cfg.BP) * triton.cdiv(cfg.n, BN))
    K.chunk_state_kernel[grid](
        x, B, dt_eff, dA, cfg.seq_ptr, out, cfg.l, cfg.h, cfg.g, cfg.p, cfg.n,
        *x.stride(), *B.stride(), *cfg.seq_strides,
        REVERSE=reverse, HAS_SEQ=cfg.has_seq, IEEE=cfg.ieee, Q=cfg.Q, BP=cfg.BP, BN=BN, BK=c["BK"],
        num_warps=c["warps"], num_stages=c["stages"],
    )
    return out


def _pass_states(cfg, states, dA, init, seq_idx, store=True, dtype=torch.float32):
    """-> (S_c entering each chunk (b, c, h, p, n) or None, final (b, h, p, n)), fp32."""
    size = cfg.p * cfg.n
    # incoming states are stored in the inputs' dtype: every reader casts them to it for its dot anyway
    prev = torch.empty(states.shape, device=states.device, dtype=dtype) if store else states
    final = torch.empty(cfg.b, cfg.h, cfg.p, cfg.n, device=states.device, dtype=torch.float32)
    BS = min(1024, _p2(size))
    init_t = init.float().contiguous() if init is not None else final
    K.state_passing_kernel[(cfg.b * cfg.h, triton.cdiv(size, BS))](
        states, dA, init_t, cfg.seq_ptr, prev, final, dA, cfg.l, cfg.h, size, *cfg.seq_strides,
        REVERSE=False, HAS_INIT=init is not None, HAS_SEQ=cfg.has_seq, STORE=store, Q=cfg.Q, BS=BS,
        num_warps=4,
    )
    return (prev if store else None), final


def _states(cfg, x, B, dt_eff, dA, init, seq_idx, store=True, dtype=torch.float32):
    """-> (S_c entering each chunk (b, c, h, p, n) in `dtype` or None, final (b, h, p, n) fp32): the fused
    walk (b * h >= min_bh) or chunk states + state passing."""
    if not _fused_walk(cfg, "fstate"):
        states = _chunk_states(cfg, x, B, dt_eff, dA, seq_idx)
        return _pass_states(cfg, states, dA, init, seq_idx, store=store, dtype=dtype)
    c = _c("fstate", cfg.Q)
    BP, BN = _walk_tiles(cfg, c)
    final = torch.empty(cfg.b, cfg.h, cfg.p, cfg.n, device=x.device, dtype=torch.float32)
    prev = torch.empty(cfg.b, cfg.nc, cfg.h, cfg.p, cfg.n, device=x.device, dtype=dtype) if store else final
    init_t = init.float().contiguous() if init is not None else final
    KF.state_fwd_fused_kernel[(cfg.b * cfg.h, triton.cdiv(cfg.p, BP) * triton.cdiv(cfg.n, BN))](
        x, B, dt_eff, dA, init_t, cfg.seq_ptr, prev, final, cfg.l, cfg.h, cfg.g, cfg.p, cfg.n,
        *x.stride(), *B.stride(), *cfg.seq_strides,
        HAS_INIT=init is not None, HAS_SEQ=cfg.has_seq, STORE=store, IEEE=cfg.ieee, Q=cfg.Q, BP=BP, BN=BN,
        BK=min(c["BK"], cfg.Q), num_warps=c["warps"], num_stages=c["stages"],
    )
    return (prev if store else None), final


def _states_bwd(cfg, dy, C, dA, dfinal, prev, dda):
    """-> (ds_c = G_{c+1} (b, c, h, p, n) in dy's dtype, dL/dinit (b, h, p, n) fp32); adds the state terms
    exp(a_last) <G_{c+1}, S_c> to dda. Fused walk (b * h >= min_bh) or u_c + reverse state passing."""
    if not _fused_walk(cfg, "bstate"):
        u = _chunk_states(cfg, dy, C, dA, dA, None, reverse=True)
        g_buf = (dfinal.float().clone() if dfinal is not None
                 else torch.zeros(cfg.b, cfg.h, cfg.p, cfg.n, device=dy.device, dtype=torch.float32)).contiguous()
        ds = torch.empty(u.shape, device=u.device, dtype=dy.dtype)
        size = cfg.p * cfg.n
        BS = min(1024, _p2(size))
        K.state_passing_kernel[(cfg.b * cfg.h, triton.cdiv(size, BS))](
            u, dA, g_buf, cfg.seq_ptr, ds, prev, dda, cfg.l, cfg.h, size, *cfg.seq_strides,
            REVERSE=True, HAS_INIT=True, HAS_SEQ=cfg.has_seq, STORE=True, Q=cfg.Q, BS=BS, num_warps=4,
        )
        return ds, g_buf
    c = _c("bstate", cfg.Q)
    BP, BN = _walk_tiles(cfg, c)
    ds = torch.empty(cfg.b, cfg.nc, cfg.h, cfg.p, cfg.n, device=dy.device, dtype=dy.dtype)
    dinit = torch.empty(cfg.b, cfg.h, cfg.p, cfg.n, device=dy.device, dtype=torch.float32)
    gin = dfinal.float().contiguous() if dfinal is not None else dinit
    KF.state_bwd_fused_kernel[(cfg.b * cfg.h, triton.cdiv(cfg.p, BP) * triton.cdiv(cfg.n, BN))](
        dy, C, dA, gin, cfg.seq_ptr, prev, ds, dinit, dda, cfg.l, cfg.h, cfg.g, cfg.p, cfg.n,
        *dy.stride(), *C.stride(), *cfg.seq_strides,
        HAS_GIN=dfinal is not None, HAS_SEQ=cfg.has_seq, IEEE=cfg.ieee, Q=cfg.Q, BP=BP, BN=BN,
        BK=min(c["BK"], cfg.Q), num_warps=c["warps"], num_stages=c["stages"],
    )
    return ds, dinit


def _cb(cfg, C, B):
    half = C.dtype in (torch.bfloat16, torch.float16)  # C·B stored in the inputs' 16-bit dtype
    cb = torch.empty(cfg.b, cfg.nc, cfg.g, cfg.Q, cfg.Q, device=C.device, dtype=C.dtype if half else torch.float32)
    c = _c("cb", cfg.Q)
    Bt = c["B"]
    K.bmm_cb_kernel[(cfg.b * cfg.nc * cfg.g, cfg.Q // Bt, cfg.Q // Bt)](
        C, B, cb, cfg.l, cfg.g, cfg.n, *B.stride(),
        IEEE=cfg.ieee, Q=cfg.Q, BI=Bt, BJ=Bt, BK=min(64, cfg.BN), num_warps=c["warps"], num_stages=c["stages"],
    )
    return cb


def _prep(x, dt, A, B, C, D, z, dt_bias, seq_idx):
    x = x.contiguous()
    B = B.contiguous()
    C = C.contiguous()
    z = z.contiguous() if z is not None else None
    D = D.contiguous() if D is not None else None
    A = A.contiguous()
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    return x, dt, A, B, C, D, z, dt_bias, seq_idx


def _forward(cfg, x, dt, A, B, C, D, z, dt_bias, dt_softplus, init, seq_idx):
    dt_eff, dA = _cumsum(cfg, dt, A, dt_bias, dt_softplus)
    prev, final = _states(cfg, x, B, dt_eff, dA, init, seq_idx, dtype=x.dtype)
    cb = _cb(cfg, C, B)
    y = torch.empty_like(x)
    ypre = torch.empty_like(x) if z is not None else y
    c = _c("scan", cfg.Q)
    K.chunk_scan_kernel[(cfg.b * cfg.nc * cfg.h, cfg.Q // c["BM"], triton.cdiv(cfg.p, cfg.BP))](  # not flat: faster
        x, C, cb, dt_eff, dA, prev, cfg.seq_ptr, D if D is not None else A, z if z is not None else x, y, ypre,
        cfg.l, cfg.h, cfg.g, cfg.p, cfg.n, *x.stride(), *C.stride(), *cfg.seq_strides,
        HAS_SEQ=cfg.has_seq, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        IEEE=cfg.ieee, Q=cfg.Q, BM=c["BM"], BP=cfg.BP, BN=cfg.BN, BK=min(c["BK"], c["BM"]), FACTOR=True,
        SWZ=False, num_warps=c["warps"], num_stages=c["stages"],
    )
    return y, ypre, final, dt_eff, dA, prev


def _backward(cfg, dout, dfinal, x, dt, A, B, C, D, z, dt_bias, dt_softplus, init, seq_idx, ypre, dt_eff, dA,
              prev=None):
    dz = None
    if z is not None:
        zf = z.float()
        sig = torch.sigmoid(zf)
        dof = dout.float()
        dz = (dof * ypre.float() * sig * (1 + zf * (1 - sig))).to(z.dtype)
        dy = (dof * zf * sig).to(x.dtype)
    else:
        dy = dout.to(x.dtype)
    dy = dy.contiguous()
    # the incoming states (saved, or recomputed) and C·B (recomputed)
    if prev is None:
        prev, _ = _states(cfg, x, B, dt_eff, dA, init, seq_idx, dtype=x.dtype)
    cb = _cb(cfg, C, B)
    # state gradients: ds_c = G_{c+1}, dinit = G_0, da_last terms
    # four (b, h, c, Q) fp32 accumulators, zeroed by one fill: da_i partials (reverse-cumsummed later), ddt
    # partials, the gradient w.r.t. dA_k = dt_k A directly, and the difference array of block totals
    dda, ddt, dda_in, diff = torch.zeros((4, *dA.shape), device=dA.device, dtype=torch.float32).unbind(0)
    ds, g_buf = _states_bwd(cfg, dy, C, dA, dfinal, prev, dda)
    # dx, ddt, da, dD
    dx = torch.empty_like(x)
    c = _c("dx", cfg.Q)
    nj = cfg.Q // c["BJ"]
    dD_part = torch.empty(cfg.b * cfg.nc * cfg.h, nj, cfg.p, device=x.device, dtype=torch.float32)
    K.bwd_dx_kernel[_grid(cfg.b * cfg.nc * cfg.h, nj, triton.cdiv(cfg.p, cfg.BP))](
        x, dy, B, cb, dt_eff, dA, ds, cfg.seq_ptr, D if D is not None else A,
        dx, ddt, dda, dD_part, dda_in, diff,
        cfg.l, cfg.h, cfg.g, cfg.p, cfg.n, *x.stride(), *B.stride(), *cfg.seq_strides,
        HAS_SEQ=cfg.has_seq, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, STABLE_DA=False,
        IEEE=cfg.ieee, Q=cfg.Q, BJ=c["BJ"], BP=cfg.BP, BN=cfg.BN, BK=min(c["BK"], c["BJ"]),
        FACTOR=True, WDIAG=False, DA2=False, TRIDOT=False, SWZ=True, num_warps=c["warps"], num_stages=c["stages"],
    )
    # dCB, in place over C·B (each tile read, then overwritten), with the intra-chunk dA summed over the
    # group's heads (0.14-0.29 ms faster per fwd+bwd on the H100 than summing it in the dx kernel)
    dcb = cb
    c = _c("dcb", cfg.Q)
    K.bwd_dcb_kernel[_grid(cfg.b * cfg.nc * cfg.g, cfg.Q // c["B"], cfg.Q // c["B"])](
        x, dy, dt_eff, dA, cfg.seq_ptr, cb, dcb, dda_in, diff, cfg.l, cfg.h, cfg.g, cfg.p, *x.stride(),
        *cfg.seq_strides,
        HAS_SEQ=cfg.has_seq, STABLE_DA=True, IEEE=cfg.ieee, NSPLIT=1, Q=cfg.Q, BI=c["B"], BJ=c["B"], BK=cfg.BP,
        FACTOR=True, TRIDOT=False, SWZ=True, ONE_K=False, num_warps=c["warps"], num_stages=c["stages"],
    )
    dB, dC = _dbc(cfg, x, dy, B, C, dt_eff, dA, prev, ds, dcb, dda)
    # dt, A, dt_bias: a = cumsum(dt_eff A) -> d(dt_eff A)_k = sum_{i>=k} da_i
    ddt_raw, dA_, d_bias = _ddt_tail(cfg, dda, dda_in, diff, ddt, dt_eff, A, dt, dt_bias, dt_softplus)
    return dx, ddt_raw, dA_, dB, dC, _dD(cfg, D, dD_part, nj), dz, d_bias, _dinit(g_buf, init)


def _dD(cfg, D, dD_part, nj):
    if D is None:
        return None
    part = dD_part.view(cfg.b * cfg.nc, cfg.h, nj, cfg.p).sum((0, 2))
    return (part if D.dim() == 2 else part.sum(-1)).to(D.dtype)


def _dinit(g_buf, init):
    return g_buf.to(init.dtype) if init is not None else None


def _dbc(cfg, x, dy, B, C, dt_eff, dA, prev, ds, dcb, dda):
    """dB, dC (b, l, g, n) in B's / C's dtype: state parts and the intra-chunk parts (dCB·B, dCBᵀ·C) in one
    kernel."""
    dC = torch.empty(cfg.b, cfg.l, cfg.g, cfg.n, device=x.device, dtype=C.dtype)
    dB = torch.empty(cfg.b, cfg.l, cfg.g, cfg.n, device=x.device, dtype=B.dtype)
    c = _c("bcs", cfg.Q)
    BN2 = min(cfg.BN, c["BN"])
    K.bwd_bc_state_kernel[_grid(cfg.b * cfg.nc * cfg.g, cfg.Q // c["BT"], triton.cdiv(cfg.n, BN2))](
        x, dy, C, dt_eff, dA, prev, ds, cfg.seq_ptr, dC, dB, dda, B, dcb, cfg.l, cfg.h, cfg.g, cfg.p, cfg.n,
        *x.stride(), *C.stride(), *cfg.seq_strides,
        HAS_SEQ=cfg.has_seq, IEEE=cfg.ieee, NSPLIT=1, Q=cfg.Q, BT=c["BT"], BN=BN2, BP=cfg.BP, FUSE_CB=True,
        ONE_K=cfg.p <= cfg.BP, SWZ=True, num_warps=c["warps"], num_stages=c["stages"],
    )
    return dB, dC


def _ddt_tail(cfg, dda, dda_in, diff, ddt, dt_eff, A, dt, dt_bias, dt_softplus):
    """One kernel: rcs = reverse-cumsum(dda) + dda_in + cumsum(diff) per chunk -> ddt (b, l, h) in dt's
    dtype, dA (h,), d_bias (h,)."""
    ddt_out = torch.empty(cfg.b, cfg.l, cfg.h, device=dt.device, dtype=dt.dtype)
    dA_ = torch.zeros(cfg.h, device=dt.device, dtype=torch.float32)
    d_bias = torch.zeros(cfg.h, device=dt.device, dtype=torch.float32) if dt_bias is not None else None
    BH = min(_p2(cfg.h, 1), max(1, 4096 // cfg.Q))
    KF.ddt_finalize_kernel[(cfg.b, cfg.nc, triton.cdiv(cfg.h, BH))](
        dda, dda_in, diff, ddt, dt_eff, A, dt, dt_bias if dt_bias is not None else A, ddt_out, dA_,
        d_bias if d_bias is not None else dA_, cfg.l, cfg.h, dt.stride(0), dt.stride(1), dt.stride(2),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), Q=cfg.Q, BH=BH,
    )
    return ddt_out, dA_.to(A.dtype), (d_bias.to(dt_bias.dtype) if d_bias is not None else None)


class _SSDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, init, seq_idx, chunk_size, dt_softplus):
        x, dt, A, B, C, D, z, dt_bias, seq_idx = _prep(x, dt, A, B, C, D, z, dt_bias, seq_idx)
        cfg = _Cfg(x, B, chunk_size, seq_idx)
        y, ypre, final, dt_eff, dA, prev = _forward(cfg, x, dt, A, B, C, D, z, dt_bias, dt_softplus, init,
                                                    seq_idx)
        if not SAVE_STATES:
            prev = None
        ctx.cfg = cfg
        ctx.dt_softplus = dt_softplus
        ctx.has = (D is not None, z is not None, dt_bias is not None, init is not None)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, init, seq_idx, ypre if z is not None else None,
                              dt_eff, dA, prev)
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, dt, A, B, C, D, z, dt_bias, init, seq_idx, ypre, dt_eff, dA, prev = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(x)
        grads = _backward(ctx.cfg, dout, dfinal, x, dt, A, B, C, D, z, dt_bias, ctx.dt_softplus, init, seq_idx,
                          ypre, dt_eff, dA, prev)
        dx, ddt, dA_, dB, dC, dD, dz, d_bias, dinit = grads
        return dx, ddt, dA_, dB, dC, dD, dz, d_bias, dinit, None, None, None


def ssd_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    seq_idx: torch.Tensor | None = None,
):
    """Mamba-2 SSD on the GPU (see `transmamba.ops.ssd.ssd` for the arguments). Differentiable in x, dt, A,
    B, C, D, z, dt_bias and initial_state. Returns y (b, l, h, p) [, final_state (b, h, p, n) fp32]."""
    from transmamba.ops.ssd.args import check_ssd_args

    if x.dtype == torch.float64:  # references in fp64 stay in torch
        from transmamba.ops.ssd.chunked import ssd_chunked

        return ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                           dt_softplus=dt_softplus, initial_state=initial_state,
                           return_final_state=return_final_state, seq_idx=seq_idx)
    check_ssd_args("ssd_triton", x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state,
                   seq_idx=seq_idx, chunk_size=chunk_size)
    y, final = _SSDFunction.apply(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, chunk_size,
                                  bool(dt_softplus))
    return (y, final) if return_final_state else y


@torch.no_grad()
def ssd_final_state_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    *,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """The Memory Converter on the GPU: the state (b, h, p, n) fp32 after x, without any output tokens.
    Three launches (chunk cumsum, chunk states, state passing); not differentiable."""
    if x.dtype == torch.float64:
        from transmamba.ops.ssd.chunked import ssd_final_state_chunked

        return ssd_final_state_chunked(x, dt, A, B, dt_bias=dt_bias, dt_softplus=dt_softplus,
                               initial_state=initial_state, seq_idx=seq_idx, chunk_size=chunk_size)
    x, dt, A, B, _, _, _, dt_bias, seq_idx = _prep(x, dt, A, B, B, None, None, dt_bias, seq_idx)
    cfg = _Cfg(x, B, chunk_size, seq_idx)
    dt_eff, dA = _cumsum(cfg, dt, A, dt_bias, dt_softplus)
    _, final = _states(cfg, x, B, dt_eff, dA, initial_state, seq_idx, store=False)
    return final


@torch.no_grad()
def ssd_step_triton(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token (see `transmamba.ops.ssd.ssd_step`): one launch, reads the state once and writes it
    once. state (b, h, p, n) (fp32 recommended), x (b, h, p), dt (b, h), B, C (b, g, n). With `inplace`
    the new state overwrites `state` (needs a contiguous state) and `state` itself is returned."""
    if x.dtype == torch.float64 or state.dtype == torch.float64:
        from transmamba.ops.ssd.naive import ssd_step_naive

        y, new = ssd_step_naive(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
        if inplace:
            state.copy_(new)
            return y, state
        return y, new
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    x = x.contiguous()
    z = z.contiguous() if z is not None else None
    B = B.contiguous()
    C = C.contiguous()
    dt = dt.contiguous()
    if inplace and state.is_contiguous():
        new = state
    else:
        state = state.contiguous()
        new = torch.empty_like(state)
    y = torch.empty_like(x)
    BN = _p2(n, 1)
    BP = min(_p2(p, 1), max(1, 4096 // BN))
    K.ssd_step_kernel[(b * h, triton.cdiv(p, BP))](
        state, x, dt, A, B, C, D if D is not None else A, z if z is not None else x,
        dt_bias if dt_bias is not None else A, y, new, h, g, p, n,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), BP=BP, BN=BN, num_warps=4,
    )
    return y, new
