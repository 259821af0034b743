"""Triton causal conv1d (fwd, bwd, decode update) against the torch reference (`ops/conv/__init__.py`).

GPU cases run on CUDA; the interpreter case (TRITON_INTERPRET=1, one subprocess) runs on the CPU and is
skipped when triton is not installed.
"""

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
_CASES = [(seq, act, bias) for seq in (False, True) for act in (None, "silu") for bias in (True, False)]


def compare(b, d, l, W, device, dtype, seq_on, act, bias_on, gen):
    """Max relative error of y, the final state and every gradient (x given as a strided (b, d, l) view)."""
    from transmamba.ops.conv import causal_conv1d
    from transmamba.ops.conv.triton import causal_conv1d_cuda

    x = torch.randn(b, l, d, generator=gen).to(device=device, dtype=dtype).transpose(1, 2).requires_grad_()
    w = torch.randn(d, W, generator=gen).to(device).requires_grad_()
    bias = torch.randn(d, generator=gen).to(device).requires_grad_() if bias_on else None
    seq = None
    if seq_on:
        seq = torch.sort(torch.randint(0, 3, (b, l), generator=gen), dim=1).values.to(device)
    y, fin = causal_conv1d_cuda(x, w, bias, activation=act, seq_idx=seq, return_final_state=True)
    leaves = [t for t in (x, w, bias) if t is not None]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    yr, finr = causal_conv1d(ref_leaves[0], ref_leaves[1], ref_leaves[2] if bias_on else None, activation=act,
                             seq_idx=seq, return_final_state=True)
    g = torch.randn(yr.shape, generator=gen).to(device=device, dtype=torch.float64)
    got = torch.autograd.grad((y.double() * g).sum(), leaves)
    want = torch.autograd.grad((yr * g).sum(), ref_leaves)
    errs = [float((y.double() - yr).norm() / yr.norm()), float((fin.double() - finr).norm() / finr.norm())]
    errs += [float((a.double() - r).norm() / r.norm()) for a, r in zip(got, want)]
    return max(errs)


def compare_update(device, dtype, gen):
    from transmamba.ops.conv import causal_conv1d_update
    from transmamba.ops.conv.triton import causal_conv1d_update_triton

    st = torch.randn(3, 40, 3, generator=gen).to(device=device, dtype=dtype)
    xt = torch.randn(3, 40, generator=gen).to(device=device, dtype=dtype)
    w = torch.randn(40, 4, generator=gen).to(device)
    bias = torch.randn(40, generator=gen).to(device)
    y, n = causal_conv1d_update_triton(xt, st, w, bias, True)
    yr, nr = causal_conv1d_update(xt.double(), st.double(), w.double(), bias.double(), "silu")
    return max(float((y.double() - yr).norm() / yr.norm()), float((n.double() - nr).norm() / nr.norm()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", _CASES)
def test_causal_conv1d_triton_gpu(case, dtype):
    gen = torch.Generator().manual_seed(2)
    err = compare(2, 300, 1000, 4, "cuda", dtype, *case, gen)
    assert err < (1e-5 if dtype == torch.float32 else 2e-2)
    assert compare_update("cuda", dtype, gen) < (1e-5 if dtype == torch.float32 else 1e-2)


_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    sys.path.insert(0, os.environ["TM_TEST_DIR"])
    from test_triton_conv import _CASES, compare, compare_update
    from transmamba.ops.conv import triton as TC
    TC._BD, TC._BL = 8, 16
    gen = torch.Generator().manual_seed(0)
    out = [compare(2, 12, 37, 4, "cpu", torch.float32, *c, gen) for c in _CASES]
    out.append(compare_update("cpu", torch.float32, gen))
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_causal_conv1d_triton_interpreter():
    env = dict(os.environ, TM_TEST_DIR=os.path.dirname(__file__), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    errs = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])
    assert max(errs) < 1e-5, errs
