"""Triton RoPE (`ops/attention/triton_rope.py`) against the torch rotate-half code of
`ops.attention.apply_rope`, forward and backward: GPU cases on CUDA, tiny fp32 cases under TRITON_INTERPRET=1
in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None


def compare(device: str, shape, dtype, per_row: bool, gen) -> float:
    """Max relative error (output, dx) of rope_triton vs the torch code in fp64."""
    from transmamba.ops.attention import apply_rope
    from transmamba.ops.attention.triton_rope import rope_triton

    b, t, h, dh = shape
    x = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    pos = torch.randint(0, 5000, (b, t) if per_row else (t,), generator=gen).to(device)
    inv = 10000.0 ** (-torch.arange(dh // 2, device=device, dtype=torch.float32) * 2.0 / dh)
    y = rope_triton(x, pos if per_row else pos[None], inv)
    xr = x.detach().double().requires_grad_()
    yr = apply_rope(xr, pos)  # fp64: the torch code
    g = torch.randn(*shape, generator=gen).to(device=device, dtype=torch.float64)
    (dx,) = torch.autograd.grad((y.double() * g).sum(), x)
    (dr,) = torch.autograd.grad((yr * g).sum(), xr)
    return max(float((y.double() - yr).norm() / yr.norm()), float((dx.double() - dr).norm() / dr.norm()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_triton_gpu(dtype):
    gen = torch.Generator().manual_seed(0)
    for shape, per_row in (((2, 333, 16, 96), False), ((3, 77, 5, 64), True), ((1, 9, 2, 6), False)):
        err = compare("cuda", shape, dtype, per_row, gen)
        assert err < (1e-5 if dtype == torch.float32 else 1e-2), (shape, err)


_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    sys.path.insert(0, os.environ["TM_TEST_DIR"])
    from test_triton_rope import compare
    from transmamba.ops.attention import apply_rope
    gen = torch.Generator().manual_seed(0)
    errs = [compare("cpu", (2, 5, 3, 12), torch.float32, False, gen),
            compare("cpu", (1, 4, 2, 6), torch.float32, True, gen)]
    x = torch.randn(2, 5, 3, 8, generator=gen)
    pos = torch.arange(5)
    from transmamba.ops import backend
    backend.use_triton = lambda t: True
    a = apply_rope(x, pos)  # dispatched to the kernel
    backend.use_triton = lambda t: False
    b = apply_rope(x, pos)  # torch code
    errs.append(float((a - b).abs().max()))
    print("RESULT" + json.dumps(errs))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_rope_triton_interpreter():
    env = dict(os.environ, TM_TEST_DIR=os.path.dirname(__file__), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    errs = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])
    assert max(errs) < 1e-5, errs
