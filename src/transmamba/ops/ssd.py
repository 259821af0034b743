"""Mamba-2's state-space duality (SSD) ops: the public entry points.

    ssd(x, dt, A, B, C, ...)            whole sequences; dispatches to a Triton kernel on CUDA when there
                                        is one, else to the chunked PyTorch version
    ssd_step(state, x, dt, A, B, C)     one decode token (functional)
    ssd_final_state(x, dt, A, B)        the Memory Converter: the state after a prefix, no outputs
    ssd_naive / ssd_chunked             the recurrent spec and the chunked PyTorch algorithm

Recurrence, per head (S is (p, n)), dt_eff = softplus(dt + dt_bias) or dt + dt_bias:

    S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_tᵀ,     y_t = S_t C_t + D x_t,     y_t *= silu(z_t) if z given

Layouts follow mamba_ssm's `mamba_chunk_scan_combined` (see `transmamba.ops.ssd_args`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch

from transmamba.ops.ssd_chunked import ssd_chunked, ssd_final_state
from transmamba.ops.ssd_naive import ssd_naive, ssd_step

__all__ = ["ssd", "ssd_naive", "ssd_chunked", "ssd_step", "ssd_final_state"]

_IMPLS = ("auto", "naive", "chunked", "triton")
_TRITON_MODULE = "transmamba.ops.triton.ssd"


def _load_triton_ssd(required: bool):
    """The Triton SSD function, or None when it is unavailable and not `required`."""
    if importlib.util.find_spec("triton") is None:
        if required:
            raise RuntimeError("ssd: impl='triton' needs the triton package")
        return None
    try:
        module = importlib.import_module(_TRITON_MODULE)
    except ModuleNotFoundError as err:
        if required or err.name not in (_TRITON_MODULE, "transmamba.ops.triton"):
            raise
        return None
    return module.ssd_triton


def ssd(
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
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD over whole sequences.

    Args:
        x: (b, l, h, p) inputs (values).
        dt: (b, l, h) step sizes, before `dt_bias` / softplus.
        A: (h,) per-head decay rate (negative for a stable SSM).
        B, C: (b, l, g, n) input and output projections; g divides h, head i reads group i // (h // g).
        chunk_size: chunk length of the chunked algorithm (the result does not depend on it).
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
        return _load_triton_ssd(required=True)(x, dt, A, B, C, **kwargs)
    if x.is_cuda and not os.environ.get("TRANSMAMBA_DISABLE_TRITON"):
        fn = _load_triton_ssd(required=False)
        if fn is not None:
            return fn(x, dt, A, B, C, **kwargs)
    return ssd_chunked(x, dt, A, B, C, **kwargs)
