"""The fused Mamba-2 decode step (conv update + SSD step + gated RMSNorm of one token, in place) on CUDA.

`triton.mamba2_decode_triton` runs it in one launch; the plain PyTorch version of the same step is the
composition of `ops.conv.causal_conv1d_update`, `ops.ssd.ssd_step` and `ops.norm.gated_rms_norm` (see
`Mamba2.step`), against which the kernel is tested.
"""
