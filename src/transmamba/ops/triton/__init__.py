"""Triton GPU kernels. Nothing is imported here: `transmamba.ops.*` dispatchers import the submodules lazily
(`transmamba.ops.ssd.triton`, ...) only when tensors are on CUDA, so the package imports without triton.
"""
