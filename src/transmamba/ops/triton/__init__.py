"""Triton GPU kernels. Nothing is imported here: `transmamba.ops.*` dispatchers import the submodules lazily
(`transmamba.ops.triton.ssd`, ...) only when tensors are on CUDA, so the package imports without triton.
"""
