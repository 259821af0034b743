"""Mamba-2's state-space duality (SSD) ops: the public entry points.

    ssd(x, dt, A, B, C, ...)            whole sequences; dispatches to a Triton kernel on CUDA when there
                                        is one, else to the chunked PyTorch version
    ssd_step(state, x, dt, A, B, C)     one decode token (functional)
    ssd_final_state(x, dt, A, B)        the Memory Converter: the state after a prefix, no outputs
    ssd_naive / ssd_chunked             the recurrent spec and the chunked PyTorch algorithm
    ssd_step_naive / ssd_final_state_chunked   the PyTorch versions of the two above

Dispatch ("auto"): CUDA tensors go to `transmamba.ops.ssd.triton` when triton is installed, that module
exists and TRANSMAMBA_DISABLE_TRITON is unset; `ssd_step` / `ssd_final_state` go there only when no
gradient is needed (their Triton versions are not differentiable). Everything else runs in PyTorch;
on the CPU `ssd` runs the chunked algorithm with chunks of min(chunk_size, 64) tokens (the result does not
depend on the chunk length, and the (Q, Q) intra-chunk work dominates there: see docs/benchmarks-cpu.md).

Recurrence, per head (S is (p, n)), dt_eff = softplus(dt + dt_bias) or dt + dt_bias:

    S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_tᵀ,     y_t = S_t C_t + D x_t,     y_t *= silu(z_t) if z given

Layouts follow mamba_ssm's `mamba_chunk_scan_combined` (see `transmamba.ops.ssd.args`).
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from transmamba.ops import backend
from transmamba.ops._callable_module import make_module_callable
from transmamba.ops.ssd.args import DEFAULT_CHUNK_SIZE, check_ssd_args, check_step_args
from transmamba.ops.ssd.chunked import ssd_chunked, ssd_final_state_chunked
from transmamba.ops.ssd.naive import ssd_naive, ssd_step_naive

__all__ = [
    "DEFAULT_CHUNK_SIZE", "ssd", "ssd_naive", "ssd_chunked", "ssd_step", "ssd_step_naive", "ssd_final_state",
    "ssd_final_state_chunked",
]

_IMPLS = ("auto", "naive", "chunked", "triton")
_TORCH_OR_TRITON = ("auto", "torch", "triton")
_TRITON_MODULE = "transmamba.ops.ssd.triton"
_CPU_CHUNK = 64  # fastest chunk length of ssd_chunked on CPU at Mamba-2 shapes (experiments/ssd_cpu.py)


def _load_triton(op: str, name: str, required: bool):
    """`transmamba.ops.ssd.triton.<name>`, or None when it is unavailable and not `required`."""
    if importlib.util.find_spec("triton") is None:
        if required:
            raise RuntimeError(f"{op}: impl='triton' needs the triton package")
        return None
    try:
        module = importlib.import_module(_TRITON_MODULE)
    except ModuleNotFoundError as err:
        if required or err.name != _TRITON_MODULE:
            raise
        return None
    return getattr(module, name)


def _auto_triton(x: torch.Tensor) -> bool:
    return backend.use_triton(x)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def ssd(
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
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD over whole sequences.

    Args:
        x: (b, l, h, p) inputs (values).
        dt: (b, l, h) step sizes, before `dt_bias` / softplus.
        A: (h,) per-head decay rate (negative for a stable SSM).
        B, C: (b, l, g, n) input and output projections; g divides h, head i reads group i // (h // g).
        chunk_size: chunk length of the chunked algorithm (the result does not depend on it; on the CPU,
            "auto" caps it at 64, the faster choice there).
        D: (h,) or (h, p) skip connection, y += D * x.
        z: (b, l, h, p) gate, y *= silu(z).
        dt_bias: (h,) added to dt; dt_softplus: apply softplus after the bias.
        initial_state: (b, h, p, n) state before position 0 (belongs to each row's first document).
        return_final_state: also return the state after the last token (of the last document).
        seq_idx: (b, l) integer document ids, non-decreasing per row; the state resets at each new one.
        impl: "auto" (Triton on CUDA if available and TRANSMAMBA_DISABLE_TRITON is unset, else chunked),
            "naive", "chunked" or "triton".

    Returns:
        y (b, l, h, p) in x's dtype [, final_state (b, h, p, n) in fp32 (fp64 for fp64 inputs)].
        Half-precision inputs are computed in fp32.
    """
    if impl not in _IMPLS:
        raise ValueError(f"ssd: impl must be one of {_IMPLS}, got {impl!r}")
    kwargs = dict(
        chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
        initial_state=initial_state, return_final_state=return_final_state, seq_idx=seq_idx,
    )
    if impl == "naive":
        return ssd_naive(x, dt, A, B, C, **kwargs)
    if impl == "chunked":
        return ssd_chunked(x, dt, A, B, C, **kwargs)
    if impl == "triton":
        return _load_triton("ssd", "ssd_triton", required=True)(x, dt, A, B, C, **kwargs)
    if _auto_triton(x):
        fn = _load_triton("ssd", "ssd_triton", required=False)
        if fn is not None:
            return fn(x, dt, A, B, C, **kwargs)
    if x.device.type == "cpu" and isinstance(chunk_size, int) and chunk_size > _CPU_CHUNK:
        kwargs["chunk_size"] = _CPU_CHUNK
    return ssd_chunked(x, dt, A, B, C, **kwargs)


def ssd_final_state(
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
    impl: str = "auto",
) -> torch.Tensor:
    """The Memory Converter: SSD's state after the last token of x, computed without any output (no C).

        S = exp(a_0 + ... + a_{l-1}) S_init + sum_s exp(a_{s+1} + ... + a_{l-1}) dt_s x_s B_sᵀ,  a_t = dt_t A

    x (b, l, h, p), dt (b, l, h), A (h,), B (b, l, g, n), dt_bias (h,), initial_state (b, h, p, n),
    seq_idx (b, l) -> (b, h, p, n) fp32 (fp64 for fp64 inputs). Equal to `ssd(..., return_final_state=True)`'s
    state; with seq_idx it is the state of each row's last document. impl: "auto", "torch" or "triton"
    (the Triton version is not differentiable: "auto" uses it only when no gradient is needed).
    """
    if impl not in _TORCH_OR_TRITON:
        raise ValueError(f"ssd_final_state: impl must be one of {_TORCH_OR_TRITON}, got {impl!r}")
    kwargs = dict(dt_bias=dt_bias, dt_softplus=dt_softplus, initial_state=initial_state, seq_idx=seq_idx,
                  chunk_size=chunk_size)
    if impl == "triton" or (impl == "auto" and _auto_triton(x)
                            and not _needs_grad(x, dt, A, B, dt_bias, initial_state)):
        fn = _load_triton("ssd_final_state", "ssd_final_state_triton", required=impl == "triton")
        if fn is not None:
            check_ssd_args("ssd_final_state", x, dt, A, B, None, dt_bias=dt_bias,
                           initial_state=initial_state, seq_idx=seq_idx, chunk_size=chunk_size)
            return fn(x, dt, A, B, **kwargs)
    return ssd_final_state_chunked(x, dt, A, B, **kwargs)


def ssd_step(
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
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token of SSD, functional (the input state is not modified).

        S' = exp(dt A) S + dt x Bᵀ,   y = S' C + D x,   y *= silu(z) if z given

    state (b, h, p, n), x (b, h, p), dt (b, h), A (h,), B, C (b, g, n), D (h,) or (h, p), z (b, h, p),
    dt_bias (h,) -> (y (b, h, p) in x's dtype, new_state (b, h, p, n) in state's dtype).
    impl: "auto", "torch" or "triton" (not differentiable: "auto" uses it only when no gradient is needed).
    """
    if impl not in _TORCH_OR_TRITON:
        raise ValueError(f"ssd_step: impl must be one of {_TORCH_OR_TRITON}, got {impl!r}")
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    if impl == "triton" or (impl == "auto" and _auto_triton(x)
                            and not _needs_grad(state, x, dt, A, B, C, D, z, dt_bias)):
        fn = _load_triton("ssd_step", "ssd_step_triton", required=impl == "triton")
        if fn is not None:
            check_step_args("ssd_step", state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias)
            return fn(state, x, dt, A, B, C, **kwargs)
    return ssd_step_naive(state, x, dt, A, B, C, **kwargs)


make_module_callable(__name__, "ssd")  # `transmamba.ops.ssd(...)` calls `ssd`
