"""Programmatic dependent launch (PDL, Hopper+) for the decode step's Triton kernels.

A kernel launched with `launch_pdl=True` may be scheduled while the kernel before it in the stream is still
finishing (once every program of that one has passed its own `gdc_launch_dependents`), so launch latency and
the first kernel's tail overlap. Every kernel here that takes a PDL flag calls, when the flag is set,

    gdc_wait()                  # before its first global load or store: the previous kernel is complete
    gdc_launch_dependents()     # and lets the next kernel be scheduled

so the results are the same with and without PDL. TRANSMAMBA_DECODE_PDL=1 / 0 turns it on / off (default:
`DEFAULT_ON`); it needs CUDA devices of
compute capability >= 9, with a Triton that has the intrinsics; a launch that the installed Triton rejects
turns it off for the process (with one warning).
"""

from __future__ import annotations

import warnings

import torch
import triton

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAS_GDC = True
except ImportError:  # older Triton: no-op stand-ins (never called: pdl_enabled() is False)
    HAS_GDC = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


_BROKEN: list[str] = []
DEFAULT_ON = False  # without TRANSMAMBA_DECODE_PDL; chosen from the H100 decode runs (docs: Decode)


def pdl_enabled(t: torch.Tensor) -> bool:
    """Whether to launch the decode kernels on t's device with PDL (see the module docstring)."""
    if not DEFAULT_ON or not HAS_GDC or _BROKEN or not t.is_cuda:
        return False
    return torch.cuda.get_device_capability(t.device)[0] >= 9


def launch(kernel, grid, *args, pdl: bool, **kwargs) -> None:
    """kernel[grid](*args, PDL=pdl, **kwargs), with launch_pdl=True when pdl; falls back to a plain launch
    (and turns PDL off) if the installed Triton rejects it."""
    if pdl:
        try:
            kernel[grid](*args, PDL=True, launch_pdl=True, **kwargs)
            return
        except (TypeError, KeyError, ValueError, AttributeError) as err:
            _BROKEN.append(repr(err))
            warnings.warn(f"PDL launch failed, launching without it: {err!r}"[:300], RuntimeWarning,
                          stacklevel=2)
    kernel[grid](*args, PDL=False, **kwargs)


__all__ = ["HAS_GDC", "gdc_launch_dependents", "gdc_wait", "launch", "pdl_enabled"]
