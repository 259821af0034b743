"""Triton: skinny GEMM y = x Wᵀ (+ bias) for the decode step's linear layers (few rows, weights streamed).

    y[m, n] = Σ_k x[m, k] · W[n, k]  (+ bias[n])      x (M, K), W (N, K) as nn.Linear stores it, M <= 64

A decode step multiplies M = batch rows by every weight matrix once, so its cost is reading W (N·K·2 bytes
in bf16): the kernel is a weight-streaming GEMV. Program (j, s) owns output columns [j·BN, (j+1)·BN) and
the K-slice [s·KS, (s+1)·KS) (split-K): it streams its (BN, KS) block of W through BK-wide tiles and
multiplies them with the matching (BM, BK) tiles of x (tl.dot, fp32 accumulation; fp32 inputs use IEEE
fp32 products, not tf32). With one K-slice the program adds the bias and stores y in x's dtype; with
several, each stores its fp32 partial sum in a workspace (S, M, N) and a second kernel adds the S partials
(in slice order, so the result is deterministic), the bias, and casts — or the caller takes the partials
and adds them where it reads y (the decode step's residual add + RMSNorm). An activation (GELU, squared
ReLU) can be applied where y is stored (the MLP's up projection), saving its own launch. Split-K fills the
GPU when N / BN gives fewer programs than it has SMs (out_proj, MLP down: N = d_model).

Inference only: there is no backward (the decode step runs under no_grad).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _act(acc, dtype, ACT: tl.constexpr):
    """acc rounded to dtype (as the linear's output is stored), then ACT (0: none, 1: gelu with erf,
    2: relu²) in fp32, returned in dtype: what torch's linear followed by F.gelu / relu().square() gives."""
    y = acc.to(dtype)
    if ACT == 1:
        v = y.to(tl.float32)
        y = (0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))).to(dtype)
    elif ACT == 2:
        v = tl.maximum(y.to(tl.float32), 0.0)
        y = (v * v).to(dtype)
    return y


@triton.jit
def _skinny_kernel(X, W, BIAS, Y, WS, M, N, K, s_xm, s_wn, s_ym, k_slice,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ONE_SLICE: tl.constexpr,
                   HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, ACT: tl.constexpr):
    j = tl.program_id(0)
    s = tl.program_id(1)
    offs_m = tl.arange(0, BM)
    offs_n = j * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    mm = offs_m < M
    mn = offs_n < N
    k0 = s * k_slice
    x_ptr = X + offs_m[:, None].to(tl.int64) * s_xm + offs_k[None, :]  # (BM, BK)
    w_ptr = W + offs_n[None, :].to(tl.int64) * s_wn + offs_k[:, None]  # (BK, BN): Wᵀ tile, k contiguous
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kk in range(0, k_slice, BK):
        k = k0 + kk + offs_k
        mk = k < K
        x = tl.load(x_ptr + k0 + kk, mask=mm[:, None] & mk[None, :], other=0.0)
        w = tl.load(w_ptr + k0 + kk, mask=mk[:, None] & mn[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
    if ONE_SLICE:
        if HAS_BIAS:
            acc += tl.load(BIAS + offs_n, mask=mn, other=0.0).to(tl.float32)[None, :]
        out = Y + offs_m[:, None].to(tl.int64) * s_ym + offs_n[None, :]
        tl.store(out, _act(acc, Y.dtype.element_ty, ACT), mask=mm[:, None] & mn[None, :])
    else:
        ws = WS + (s * M + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :]
        tl.store(ws, acc, mask=mm[:, None] & mn[None, :])


@triton.jit
def _reduce_kernel(WS, BIAS, Y, M, N, s_ym, S, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
                   ACT: tl.constexpr):
    """y[m, n] = act(Σ_s WS[s, m, n] (+ bias[n])), in slice order."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # flat index m·N + n
    msk = offs < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, S):
        acc += tl.load(WS + s * M * N + offs, mask=msk, other=0.0)
    n = offs % N
    m = offs // N
    if HAS_BIAS:
        acc += tl.load(BIAS + n, mask=msk, other=0.0).to(tl.float32)
    tl.store(Y + m * s_ym + n, _act(acc, Y.dtype.element_ty, ACT), mask=msk)


def skinny_config(M: int, N: int, K: int, n_sm: int, reduce: bool = True) -> dict[str, int]:
    """The launch configuration for an (M, K) x (K, N) product on a GPU with n_sm SMs, a rule read off the
    H100 sweep at the 400M models' decode shapes (docs/performance.md, Decode; M = 1 / 16 / 64):
    - enough column blocks to fill the GPU without splitting K when N allows (a split costs a second launch
      for the reduction unless the caller takes the partials): BN = 64 (128 for M > 32 and N >= 8192) when
      N / 64 gives >= 0.9 blocks per SM, else BN = 32 (BN = 16 when N / 32 falls short and the partials
      would need their own reduction);
    - with fewer than 0.5 blocks per SM, split K in up to 4 slices (each >= 512 wide) for about 2
      programs per SM;
    - BK = 256 for narrow blocks without a split, else 128; 4 warps; 4 stages (3 with BK = 256)."""
    if cdiv(N, 64) >= 0.9 * n_sm:
        BN = 128 if M > 32 and N >= 8192 else 64
    elif cdiv(N, 32) >= 0.9 * n_sm or not reduce:
        BN = 32
    else:
        BN = 16 if cdiv(N, 16) >= 0.7 * n_sm else 32
    blocks = cdiv(N, BN)
    split = 1 if blocks >= 0.5 * n_sm else max(1, min(4, K // 512, cdiv(2 * n_sm, blocks)))
    BK = 256 if split == 1 and BN <= 32 and K >= 256 else 128
    return {"BN": BN, "BK": BK, "split": split, "num_warps": 4, "num_stages": 3 if BK == 256 else 4}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _fit_stages(BM: int, BN: int, BK: int, stages: int, elsize: int, limit: int = 200 * 1024) -> int:
    """Fewer pipeline stages where the x and W tiles of `stages` stages would not fit in shared memory."""
    while stages > 2 and stages * (BM + BN) * BK * elsize > limit:
        stages -= 1
    return stages


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


ACTS = {None: 0, "gelu": 1, "relu2": 2}


def skinny_linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         config: dict[str, int] | None = None, *, act: str | None = None,
                         reduce: bool = True) -> torch.Tensor:
    """x (M, K) with M <= 64 and a contiguous last dim; weight (N, K) with a contiguous last dim; bias (N,)
    or None -> y (M, N) = act(x Wᵀ + bias) in x's dtype; act: None, "gelu" (erf form, F.gelu's default) or
    "relu2" (relu(·)², squared ReLU). reduce=False (no bias, no act): when the product is split over K,
    return the fp32 partial sums (S, M, N) unreduced, for a consumer that adds them itself
    (`ops/norm/triton_add.py`); with one K-slice it is y as usual. `config` (BN, BK, split, num_warps,
    num_stages) overrides `skinny_config` (for the benchmark's sweep)."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"skinny_linear_triton: x (M, K) and weight (N, K) must share K, "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    M, K = x.shape
    N = weight.shape[0]
    if not 1 <= M <= 64:
        raise ValueError(f"skinny_linear_triton: at most 64 rows, got {M}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("skinny_linear_triton: x and weight need a contiguous last dim")
    if bias is not None and (bias.shape != (N,) or not bias.is_contiguous()):
        raise ValueError(f"skinny_linear_triton: bias must be a contiguous ({N},) tensor")
    if act not in ACTS:
        raise ValueError(f"skinny_linear_triton: act must be one of {list(ACTS)}, got {act!r}")
    if not reduce and (bias is not None or act is not None):
        raise ValueError("skinny_linear_triton: reduce=False takes neither a bias nor an activation")
    cfg = dict(skinny_config(M, N, K, _sm_count(x.device), reduce and bias is None and act is None))
    cfg.update(config or {})
    BN, BK, split = cfg["BN"], cfg["BK"], max(1, int(cfg["split"]))
    k_slice = triton.cdiv(triton.cdiv(K, split), BK) * BK  # a multiple of BK
    split = triton.cdiv(K, k_slice)
    BM = max(16, triton.next_power_of_2(M))
    stages = _fit_stages(BM, BN, BK, cfg["num_stages"], x.element_size())
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    ws = y if split == 1 else torch.empty(split, M, N, device=x.device, dtype=torch.float32)
    b_arg = bias if bias is not None else y
    _skinny_kernel[(triton.cdiv(N, BN), split)](
        x, weight, b_arg, y, ws, M, N, K, x.stride(0), weight.stride(0), y.stride(0), k_slice,
        BM=BM, BN=BN, BK=BK, ONE_SLICE=split == 1, HAS_BIAS=bias is not None,
        IEEE=x.dtype == torch.float32, ACT=ACTS[act], num_warps=cfg["num_warps"], num_stages=stages,
    )
    if split > 1 and not reduce:
        return ws
    if split > 1:
        block = 1024
        _reduce_kernel[(triton.cdiv(M * N, block),)](ws, b_arg, y, M, N, y.stride(0), split,
                                                     BLOCK=block, HAS_BIAS=bias is not None, ACT=ACTS[act],
                                                     num_warps=4)
    return y


__all__ = ["ACTS", "skinny_config", "skinny_linear_triton"]
