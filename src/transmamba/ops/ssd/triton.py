# ruff: noqa: E501  (kernel code reads better with long index expressions on one line)
"""Triton SSD (Mamba-2): `ssd_triton` (forward + backward, an autograd Function), `ssd_final_state_triton`
(the Memory Converter: state only, no outputs) and `ssd_step_triton` (one decode token).

Same arguments and results as `transmamba.ops.ssd.ssd` (the torch reference is the spec); the algorithm
and the backward formulas are in `ssd_kernels.py` (and `ssd_kernels_fused.py`). Two pipelines, chosen per
call by CONFIG["misc"] (see there); the second is the default:
- first (FIRST_PATH): forward 5 launches (chunk cumsum with dt bias/softplus fused, C·B per chunk and
  group, chunk states, state passing, chunk scan with D and the z gate fused); backward recomputes C·B, then
  6 launches and small torch ops on (b, h, L) tensors (the dB/dC intra parts as fp32 einsums).
- second (NEW_PATH): forward 4 launches (chunk states and state passing fused into one sequential walk per
  head and state tile; C·B stored in the inputs' dtype; the scan's decay factorised per block, so only the
  diagonal block evaluates exp(a_i - a_j)); backward 6 launches + one fill and one small sum (the reverse
  walk fused likewise; the intra-chunk dA summed in the dCB kernel, misc.dda_in_dx = 0 since session 3
  (session 2: from the dx kernel's block sums, = 2); dB/dC's intra parts fused into the dB/dC-state kernel;
  the ddt/dA/d_bias tail in one kernel; the dx, dCB and dB/dC-state kernels on flat launch grids with each
  chunk's tiles consecutive, misc.swz, so tiles reading the same x / dy / states share them through L2).
Opt-in on top of the second (CONFIG["misc"], see there): head-blocked chunk scan and dx kernel (`wide`,
`wide_dx`, `ssd_kernels_wide.py`: NH heads of a group per program share the C·B tile), the dA's diagonal
prefix sums as a dot (`tridot`), a pipelined dCB head loop when it sums the dA (`onek_da`), the dCB
kernel's heads split over programs (`dcb_split`), a flat grid for the chunk scan too (`swz_scan`): all
measured slower or no faster on the H100 (docs/gpu-benchmarks.md, SSD speed, session 3).
Backward takes the incoming chunk states saved by the forward (or recomputes them, see SAVE_STATES).
Saved for backward: the inputs, the pre-gate output y when z is given (for dz) and two fp32 (b, h, L)
tensors (dt_eff and the chunk-cumulative log decays).

Compute: matmul operands in the inputs' dtype (bf16 / fp16; fp32 inputs use IEEE fp32 dots, so fp32 results
agree with the fp64 reference to ~1e-6; `TRANSMAMBA_SSD_TF32=1` opts into tf32 dots for fp32 inputs, about
1e-3 relative error), accumulation and all decays in fp32; the final state is fp32. The factorised decay
of the second pipeline, exp(a_i - a_j) = exp(a_i - a_r) exp(a_r - a_j) with a_r between them, is exact
whenever both factors are representable: always when dt·A <= 0 (a stable SSM, the usual softplus dt and
negative A).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton

from transmamba.ops.ssd import triton_kernels as K
from transmamba.ops.ssd import triton_kernels_fused as KF
from transmamba.ops.ssd import triton_kernels_wide as KW

__all__ = ["ssd_triton", "ssd_final_state_triton", "ssd_step_triton", "CONFIG"]

# Launch settings per kernel (block sizes are capped at the chunk length; K-blocks at the row blocks).
# `python experiments/gpu_studies.py --cases ssd-tune` sweeps them.
CONFIG: dict[str, dict[str, int]] = {  # best of the ssd-tune sweeps on an H100 (docs/performance.md)
    "state": dict(BK=32, warps=4, stages=3),  # chunk states / u_c
    "cb": dict(B=128, warps=8, stages=2),  # C·B per chunk and group (batch 7: 128-tiles 0.07 ms faster at 16
    # groups, the same at 1 group; was B=64, 4 warps)
    "scan": dict(BM=128, BK=32, warps=8, stages=3),  # chunk scan (outputs)
    "dx": dict(BJ=64, BK=32, warps=4, stages=3),  # backward dx / ddt / da
    "dcb": dict(B=64, warps=4, stages=2),  # backward dCB (and the intra-chunk dA unless misc.dda_in_dx)
    "bcs": dict(BT=64, BN=64, warps=4, stages=2),  # backward state parts of dB, dC
    # fused chunk states + state passing (forward) / u_c + reverse state passing (backward); with fewer than
    # `min_progs` programs (b * h * p/BP * n/BN) the state tile is halved (BN, then BP, down to 32 / 16);
    # with b * h < min_bh the two-pass chunk-parallel kernels run instead (the walk is sequential per head)
    # (measured: at b * h = 64, L = 32K the walks took 0.44 / 0.62 ms against 0.40 / 0.51 ms for the two
    # passes; at b * h = 128, L = 4K 0.07 / 0.10 ms against 0.11 / 0.11 ms)
    "fstate": dict(BP=64, BN=64, BK=64, warps=4, stages=3, min_progs=0, min_bh=128),
    "bstate": dict(BP=64, BN=64, BK=64, warps=4, stages=3, min_progs=0, min_bh=128),
    # head-blocked kernels (misc.wide / misc.wide_dx = NH heads per program, ssd_kernels_wide.py)
    "wscan": dict(BM=64, BK=64, warps=4, stages=2),  # best of batch 6's sweeps (6 / 5 points, 4 x 8192)
    "wdx": dict(BJ=64, BK=32, warps=4, stages=2),
    # where the intra-chunk dA is summed: 0 = bwd_dcb kernel (per group, loops over its heads), 1 = bwd_dx
    # kernel (per head), 2 = bwd_dx kernel from its factorised block sums (no per-tile W off the diagonal;
    # see bwd_dx_kernel DA2). H100, second path (batches 6-7): 0 is 0.14-0.29 ms faster than 2 at 4 x 8192,
    # 1 x 32768, 32 x 1024 and the 400m layer call (2 x 8192, 48 heads, 16 groups), same accuracy
    "misc": dict(dda_in_dx=0, hsplit=1,  # hsplit: split each group's heads over this many programs
                                         # in the dCB and dB/dC-state kernels (atomics; 1 = none)
                 # second-generation switches (each 0 = the first path): fstate = fused state walks (fwd
                 # and bwd), factor = per-block factorised decay (scan, dx, dCB), cb16 = C·B stored in the
                 # inputs' dtype when it is 16-bit, fbc = dB/dC intra parts fused into the bcs kernel,
                 # fddt = the ddt/dA/d_bias tail in one kernel, onek = no inner loop over headdim in the
                 # per-group kernels when one block covers it (their head loop gets software-pipelined)
                 # Default: the second path with dda_in_dx = 0 and swz = 1 (measured fastest on the H100,
                 # docs/gpu-benchmarks.md);
                 # CONFIG["misc"].update(FIRST_PATH) or TRANSMAMBA_SSD_CONFIG='{"misc": {...}}' selects the first.
                 # cb16 costs accuracy on dA (error against fp64 2.2e-4 -> 1.6e-3 at the benchmark shape) but
                 # without it the second path is slower than the first (4 x 8192: fwd+bwd 5.99 ms against
                 # 5.19 ms with it and 5.58 ms for the first path)
                 fstate=1, factor=1, cb16=1, fbc=1, fddt=1, onek=1,
                 # wide = NH > 1: the chunk scan takes NH heads of a group per program (C·B and C loaded
                 # once for them); wide_dx = NH > 1: the same for the dx kernel when dda_in_dx = 0. Both
                 # need factor = 1 and NH dividing the heads per group (else the per-head kernels run)
                 wide=0, wide_dx=0,
                 # onek_da: onek also for the dCB kernel when it sums the dA (dda_in_dx = 0; needs factor:
                 # the tile kind is then a compile-time constant, no branch in the head loop); tridot: the
                 # diagonal tiles' 2-D prefix sums of the dA as one dot with a triangular ones matrix (3-pass
                 # tf32 for 16-bit inputs) instead of a scan
                 onek_da=0, tridot=0,
                 # swz: flat launch grids with a chunk's (or head's) tiles consecutive (dx, dCB, dB/dC-state
                 # kernels; swz_scan: the chunk scan), so the tiles that read the same x / dy / states run
                 # together (L2 hits). Batch 7 (H100, 4 x 8192): fwd+bwd 4.95 -> 4.73 ms with dda_in_dx = 0;
                 # the scan alone 0.700 -> 0.715 ms, hence swz_scan = 0
                 swz=1, swz_scan=0,
                 # dcb_split: the dCB kernel's heads split over this many programs per group (its tile then
                 # added atomically into a zeroed fp32 dCB; more programs in flight for its per-head dA work)
                 dcb_split=1),
}
NEW_PATH = dict(fstate=1, factor=1, cb16=1, fbc=1, fddt=1, onek=1, dda_in_dx=0, swz=1, swz_scan=0, dcb_split=1)
FIRST_PATH = dict(fstate=0, factor=0, cb16=0, fbc=0, fddt=0, onek=0, dda_in_dx=0, swz=0, swz_scan=0,
                  dcb_split=1)


# Keep the incoming chunk states (b, c, h, p, n) in the inputs' dtype from forward to backward (about
# p*n/Q elements per token and head: half of x's size at chunk 256, d_state 128, headdim 64) instead of
# recomputing them (one chunk-state and one state-passing launch).
SAVE_STATES = True


def _c(kernel: str, Q: int) -> dict[str, int]:
    """CONFIG[kernel] with block sizes capped at Q."""
    return {k: (min(v, Q) if k not in ("warps", "stages", "min_progs", "min_bh") else v)
            for k, v in CONFIG[kernel].items()}


def _fused_walk(cfg, kernel: str) -> bool:
    return _misc("fstate") and cfg.b * cfg.h >= CONFIG[kernel].get("min_bh", 0)


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


def _wide(cfg, key: str) -> int:
    """Heads per program of the head-blocked kernels (CONFIG misc[key]): NH > 1 when it is set, the
    factorised decay is on and NH divides the heads per group; else 1 (the per-head kernels)."""
    nh = int(CONFIG["misc"].get(key, 0))
    if nh > 1 and _misc("factor") and (cfg.h // cfg.g) % nh == 0 and nh & (nh - 1) == 0:
        return nh
    return 1


def _grid(n0: int, n1: int, n2: int, key: str = "swz") -> tuple[int, int, int]:
    """Launch grid of a logical (n0, n1, n2) grid: flat with the inner two axes fastest under misc[key] (the
    kernel's _pids undoes it; key swz: the backward kernels, swz_scan: the chunk scan), else as is."""
    return (n0 * n1 * n2, 1, 1) if _misc(key) else (n0, n1, n2)


def _p2(v: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(v)))


def _ieee(x: torch.Tensor) -> bool:
    """IEEE fp32 dots for fp32 inputs (tf32 dots measured 1.5e-3 relative error against fp64, IEEE 1.6e-6)."""
    return x.dtype == torch.float32


def _misc(key: str) -> bool:
    return bool(CONFIG["misc"].get(key, 0))


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
    walk (CONFIG misc.fstate) or chunk states + state passing."""
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
    exp(a_last) <G_{c+1}, S_c> to dda. Fused walk (misc.fstate) or u_c + reverse state passing."""
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
    half = _misc("cb16") and C.dtype in (torch.bfloat16, torch.float16)
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
    nh = _wide(cfg, "wide")
    if nh > 1:
        c = _c("wscan", cfg.Q)
        KW.chunk_scan_wide_kernel[_grid(cfg.b * cfg.nc * cfg.h // nh, cfg.Q // c["BM"], triton.cdiv(cfg.p, cfg.BP),
                                        "swz_scan")](
            x, C, cb, dt_eff, dA, prev, cfg.seq_ptr, D if D is not None else A, z if z is not None else x, y, ypre,
            cfg.l, cfg.h, cfg.g, cfg.p, cfg.n, *x.stride(), *C.stride(), *cfg.seq_strides,
            HAS_SEQ=cfg.has_seq, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
            IEEE=cfg.ieee, Q=cfg.Q, BM=c["BM"], BP=cfg.BP, BN=cfg.BN, BK=min(c["BK"], c["BM"]), NH=nh,
            SWZ=_misc("swz_scan"), num_warps=c["warps"], num_stages=c["stages"],
        )
        return y, ypre, final, dt_eff, dA, prev
    c = _c("scan", cfg.Q)
    K.chunk_scan_kernel[_grid(cfg.b * cfg.nc * cfg.h, cfg.Q // c["BM"], triton.cdiv(cfg.p, cfg.BP), "swz_scan")](
        x, C, cb, dt_eff, dA, prev, cfg.seq_ptr, D if D is not None else A, z if z is not None else x, y, ypre,
        cfg.l, cfg.h, cfg.g, cfg.p, cfg.n, *x.stride(), *C.stride(), *cfg.seq_strides,
        HAS_SEQ=cfg.has_seq, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        IEEE=cfg.ieee, Q=cfg.Q, BM=c["BM"], BP=cfg.BP, BN=cfg.BN, BK=min(c["BK"], c["BM"]), FACTOR=_misc("factor"),
        SWZ=_misc("swz_scan"), num_warps=c["warps"], num_stages=c["stages"],
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
    mode = int(CONFIG["misc"]["dda_in_dx"])  # 0: dCB kernel, 1: dx kernel per tile, 2: dx kernel factorised
    in_dx = mode != 0
    nh = _wide(cfg, "wide_dx") if mode == 0 else 1
    c = _c("wdx" if nh > 1 else "dx", cfg.Q)
    nj = cfg.Q // c["BJ"]
    dD_part = torch.empty(cfg.b * cfg.nc * cfg.h, nj, cfg.p, device=x.device, dtype=torch.float32)
    if nh > 1:
        KW.bwd_dx_wide_kernel[_grid(cfg.b * cfg.nc * cfg.h // nh, nj, triton.cdiv(cfg.p, cfg.BP))](
            x, dy, B, cb, dt_eff, dA, ds, cfg.seq_ptr, D if D is not None else A, dx, ddt, dda, dD_part,
            cfg.l, cfg.h, cfg.g, cfg.p, cfg.n, *x.stride(), *B.stride(), *cfg.seq_strides,
            HAS_SEQ=cfg.has_seq, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
            IEEE=cfg.ieee, Q=cfg.Q, BJ=c["BJ"], BP=cfg.BP, BN=cfg.BN, BK=min(c["BK"], c["BJ"]), NH=nh,
            SWZ=_misc("swz"), num_warps=c["warps"], num_stages=c["stages"],
        )
    else:
        K.bwd_dx_kernel[_grid(cfg.b * cfg.nc * cfg.h, nj, triton.cdiv(cfg.p, cfg.BP))](
            x, dy, B, cb, dt_eff, dA, ds, cfg.seq_ptr, D if D is not None else A,
            dx, ddt, dda, dD_part, dda_in, diff,
            cfg.l, cfg.h, cfg.g, cfg.p, cfg.n, *x.stride(), *B.stride(), *cfg.seq_strides,
            HAS_SEQ=cfg.has_seq, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, STABLE_DA=in_dx,
            IEEE=cfg.ieee, Q=cfg.Q, BJ=c["BJ"], BP=cfg.BP, BN=cfg.BN, BK=min(c["BK"], c["BJ"]),
            FACTOR=(_misc("factor") and mode == 0) or mode == 2, WDIAG=in_dx, DA2=mode == 2, TRIDOT=_misc("tridot"),
            SWZ=_misc("swz"), num_warps=c["warps"], num_stages=c["stages"],
        )
    # dC, dB

    nsplit = math.gcd(int(CONFIG["misc"]["hsplit"]), cfg.h // cfg.g)
    # the dCB kernel alone may split the heads too (misc.dcb_split; the dB/dC-state kernel stays fused)
    dsplit = nsplit if nsplit > 1 else math.gcd(max(1, int(CONFIG["misc"].get("dcb_split", 1))), cfg.h // cfg.g)
    # dCB: in place over C·B (each tile read, then overwritten) unless heads are split over programs
    dcb = cb if dsplit == 1 else torch.zeros(cb.shape, device=cb.device, dtype=torch.float32)
    c = _c("dcb", cfg.Q)
    K.bwd_dcb_kernel[_grid(cfg.b * cfg.nc * cfg.g * dsplit, cfg.Q // c["B"], cfg.Q // c["B"])](
        x, dy, dt_eff, dA, cfg.seq_ptr, cb, dcb, dda_in, diff, cfg.l, cfg.h, cfg.g, cfg.p, *x.stride(),
        *cfg.seq_strides,
        HAS_SEQ=cfg.has_seq, STABLE_DA=not in_dx, IEEE=cfg.ieee, NSPLIT=dsplit, Q=cfg.Q, BI=c["B"], BJ=c["B"], BK=cfg.BP,
        FACTOR=_misc("factor"), TRIDOT=_misc("tridot"), SWZ=_misc("swz"),
        ONE_K=_misc("onek") and cfg.p <= cfg.BP and (mode != 0 or (_misc("onek_da") and _misc("factor"))),
        num_warps=c["warps"], num_stages=c["stages"],
    )
    dB, dC = _dbc(cfg, x, dy, B, C, dt_eff, dA, prev, ds, dcb, dda, nsplit)
    # dt, A, dt_bias: a = cumsum(dt_eff A) -> d(dt_eff A)_k = sum_{i>=k} da_i
    if _misc("fddt"):
        ddt_raw, dA_, d_bias = _ddt_tail(cfg, dda, dda_in, diff, ddt, dt_eff, A, dt, dt_bias, dt_softplus)
        return dx, ddt_raw, dA_, dB, dC, _dD(cfg, D, dD_part, nj), dz, d_bias, _dinit(g_buf, init)
    rcs = dda.flip(-1).cumsum(-1).flip(-1) + dda_in + diff.cumsum(-1)
    ddt_eff = ddt + A.float()[None, :, None, None] * rcs
    dA_ = (dt_eff * rcs).sum((0, 2, 3)).to(A.dtype)
    ddt_eff = ddt_eff.view(cfg.b, cfg.h, cfg.nc * cfg.Q)[:, :, : cfg.l].transpose(1, 2)  # (b, l, h)
    ddt_raw = ddt_eff
    if dt_softplus:
        v = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
        ddt_raw = ddt_eff * torch.sigmoid(v)
    d_bias = ddt_raw.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
    return dx, ddt_raw.to(dt.dtype), dA_, dB, dC, _dD(cfg, D, dD_part, nj), dz, d_bias, _dinit(g_buf, init)


def _dD(cfg, D, dD_part, nj):
    if D is None:
        return None
    part = dD_part.view(cfg.b * cfg.nc, cfg.h, nj, cfg.p).sum((0, 2))
    return (part if D.dim() == 2 else part.sum(-1)).to(D.dtype)


def _dinit(g_buf, init):
    return g_buf.to(init.dtype) if init is not None else None


def _dbc(cfg, x, dy, B, C, dt_eff, dA, prev, ds, dcb, dda, nsplit):
    """dB, dC (b, l, g, n) in B's / C's dtype: state parts in the bcs kernel, intra-chunk parts (dCB·B,
    dCBᵀ·C) fused into it (misc.fbc, without the head split) or as two torch einsums."""
    fuse = _misc("fbc") and nsplit == 1
    L = cfg.nc * cfg.Q
    if fuse:
        dC = torch.empty(cfg.b, cfg.l, cfg.g, cfg.n, device=x.device, dtype=C.dtype)
        dB = torch.empty(cfg.b, cfg.l, cfg.g, cfg.n, device=x.device, dtype=B.dtype)
    else:
        alloc = torch.empty if nsplit == 1 else torch.zeros
        dC = alloc(cfg.b, L, cfg.g, cfg.n, device=x.device, dtype=torch.float32)
        dB = alloc(cfg.b, L, cfg.g, cfg.n, device=x.device, dtype=torch.float32)
    c = _c("bcs", cfg.Q)
    BN2 = min(cfg.BN, c["BN"])
    K.bwd_bc_state_kernel[_grid(cfg.b * cfg.nc * cfg.g, cfg.Q // c["BT"], triton.cdiv(cfg.n, BN2) * nsplit)](
        x, dy, C, dt_eff, dA, prev, ds, cfg.seq_ptr, dC, dB, dda, B, dcb, cfg.l, cfg.h, cfg.g, cfg.p, cfg.n,
        *x.stride(), *C.stride(), *cfg.seq_strides,
        HAS_SEQ=cfg.has_seq, IEEE=cfg.ieee, NSPLIT=nsplit, Q=cfg.Q, BT=c["BT"], BN=BN2, BP=cfg.BP, FUSE_CB=fuse,
        ONE_K=_misc("onek") and cfg.p <= cfg.BP, SWZ=_misc("swz"), num_warps=c["warps"], num_stages=c["stages"],
    )
    if fuse:
        return dB, dC
    pad = L - cfg.l
    Bp = F.pad(B, (0, 0, 0, 0, 0, pad)).view(cfg.b, cfg.nc, cfg.Q, cfg.g, cfg.n).float()
    Cp = F.pad(C, (0, 0, 0, 0, 0, pad)).view(cfg.b, cfg.nc, cfg.Q, cfg.g, cfg.n).float()
    dcb = dcb.float()
    dC = dC.view(cfg.b, cfg.nc, cfg.Q, cfg.g, cfg.n) + torch.einsum("bcgij,bcjgn->bcign", dcb, Bp)
    dB = dB.view(cfg.b, cfg.nc, cfg.Q, cfg.g, cfg.n) + torch.einsum("bcgij,bcign->bcjgn", dcb, Cp)
    dC = dC.view(cfg.b, L, cfg.g, cfg.n)[:, : cfg.l].to(C.dtype)
    dB = dB.view(cfg.b, L, cfg.g, cfg.n)[:, : cfg.l].to(B.dtype)
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
    chunk_size: int = 256,
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
    chunk_size: int = 256,
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
