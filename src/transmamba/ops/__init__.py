"""transmamba.ops: pure tensor functions with mamba_ssm's layouts, each beside its plain reference.

`transmamba.ops.ssd(...)` and `transmamba.ops.selective_scan(...)` are callable (they are also the
modules holding the reference and chunked versions). CUDA tensors go to Triton kernels when Triton is
installed; nothing here imports Triton or touches CUDA at import time.
"""

from transmamba.ops import selective_scan, ssd
from transmamba.ops.attention import causal_attention, decode_attention
from transmamba.ops.conv import causal_conv1d, causal_conv1d_update
from transmamba.ops.norm import gated_rms_norm, rms_norm
from transmamba.ops.selective_scan import selective_state_update
from transmamba.ops.ssd import ssd_final_state, ssd_step

__all__ = [
    "causal_attention",
    "causal_conv1d",
    "causal_conv1d_update",
    "decode_attention",
    "gated_rms_norm",
    "rms_norm",
    "selective_scan",
    "selective_state_update",
    "ssd",
    "ssd_final_state",
    "ssd_step",
]
