"""Triton conv1d on a gapped channel slice of a wider buffer (Mamba's xBC part of in_proj's output,
(b, t, d_in_proj)[..., a:a+dim].transpose(1, 2)): forward and every gradient against the torch reference,
and the output's channels-last layout. GPU case on CUDA, tiny fp32 case under TRITON_INTERPRET=1."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch


def compare_slice(device: str, b=2, l=37, d=24, W=4, extra=(5, 9), dtype=torch.float32, seed=0):
    from transmamba.ops.conv import causal_conv1d
    from transmamba.ops.conv.triton import causal_conv1d_triton

    gen = torch.Generator().manual_seed(seed)
    buf = torch.randn(b, l, extra[0] + d + extra[1], generator=gen).to(device=device, dtype=dtype)
    buf.requires_grad_()
    w = torch.randn(d, W, generator=gen).to(device).requires_grad_()
    bias = torch.randn(d, generator=gen).to(device).requires_grad_()
    x = buf[..., extra[0]:extra[0] + d].transpose(1, 2)  # (b, d, l), channel stride 1, gaps between rows
    y = causal_conv1d_triton(x, w, bias, None, True)
    assert y.stride(1) == 1, "output should be channels-last like its input"
    rb, rw, rbias = (t.detach().double().requires_grad_() for t in (buf, w, bias))
    yr = causal_conv1d(rb[..., extra[0]:extra[0] + d].transpose(1, 2), rw, rbias, activation="silu")
    g = torch.randn(yr.shape, generator=gen).to(device=device, dtype=torch.float64)
    got = torch.autograd.grad((y.double() * g).sum(), (buf, w, bias))
    want = torch.autograd.grad((yr * g).sum(), (rb, rw, rbias))
    errs = [float((y.double() - yr).norm() / yr.norm())]
    errs += [float((a.double() - r).norm() / r.norm()) for a, r in zip(got, want)]
    return max(errs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conv_on_gapped_slice_gpu():
    assert compare_slice("cuda", b=3, l=1000, d=200, extra=(64, 40)) < 1e-5
    assert compare_slice("cuda", b=2, l=513, d=96, dtype=torch.bfloat16) < 2e-2


_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, os.environ["TM_TEST_DIR"])
    from test_triton_conv_slice import compare_slice
    from transmamba.ops.conv import triton as TC
    errs = [compare_slice("cpu")]  # default tiles: one tile, one time block per program
    TC._BD, TC._BL, TC._PROGRAMS = 8, 16, 2  # several channel tiles; 3 time blocks walked by one program
    errs.append(compare_slice("cpu", seed=1))
    TC._PROGRAMS = 12  # time split over programs: 3 blocks, one each
    errs.append(compare_slice("cpu", seed=2))
    print("RESULT", max(errs))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_conv_on_gapped_slice_interpreter():
    env = dict(os.environ, TM_TEST_DIR=os.path.dirname(__file__), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    err = float([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1].split()[1])
    assert err < 1e-5, err
