"""Triton gated RMSNorm against the torch reference (`ops/norm/__init__.py`), forward and backward.

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

_CASES = [(z, before, gs) for z in (True, False) for before in (False, True) for gs in (None, 8)]


def compare(fn, ref, shape, dtype, device, with_z, before, group_size, gen):
    x = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    z = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_() if with_z else None
    w = torch.randn(shape[-1], generator=gen).to(device=device).requires_grad_()
    leaves = [t for t in (x, z, w) if t is not None]
    y = fn(x, z, w, 1e-5, group_size, before)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    rx, rz, rw = ref_leaves[0], (ref_leaves[1] if with_z else None), ref_leaves[-1]
    yr = ref(rx, rz, rw, 1e-5, group_size, before)
    g = torch.randn(*shape, generator=gen).to(device=device, dtype=torch.float64)
    got = torch.autograd.grad((y.double() * g).sum(), leaves)
    want = torch.autograd.grad((yr * g).sum(), ref_leaves)
    errs = [float((y.double() - yr).norm() / yr.norm())]
    errs += [float((a.double() - b).norm() / b.norm()) for a, b in zip(got, want)]
    return max(errs)


def compare_strided(fn, ref, dtype, device, with_z, before, group_size, gen, d=24):
    """Strided inputs read in place: x a time slice of a (b, t, d) tensor, z a time + column slice of a wider
    buffer, the output's gradient a slice of a concatenation (non-contiguous); and a 2-D case with a row
    stride (decode's z). Max relative error of the output and every gradient against the fp64 reference."""
    errs = []
    for two_d in (False, True):
        b, t, P = 3, 9, 4
        xb = torch.randn(b * t if two_d else b, *(() if two_d else (t,)), d, generator=gen)
        zb = torch.randn(*xb.shape[:-1], d + 8, generator=gen)
        leaves = [xb.to(device=device, dtype=dtype).requires_grad_(),
                  zb.to(device=device, dtype=dtype).requires_grad_(),
                  torch.randn(d, generator=gen).to(device).requires_grad_()]
        g = torch.randn(*xb.shape, generator=gen).to(device=device, dtype=torch.float64)

        def run(f, xl, zl, wl, two_d=two_d, P=P):
            x = xl if two_d else xl[:, P:]
            z = (zl[..., 3:3 + d] if two_d else zl[:, P:, 3:3 + d]) if with_z else None
            y = f(x, z, wl, 1e-5, group_size, before)
            out = y if two_d else torch.cat([torch.zeros_like(xl[:, :P]), y], dim=1)
            return out

        y = run(fn, *leaves)
        ref_leaves = [v.detach().double().requires_grad_() for v in leaves]
        yr = run(ref, *ref_leaves)
        used = [0, 1, 2] if with_z else [0, 2]
        got = torch.autograd.grad((y.double() * g).sum(), [leaves[i] for i in used])
        want = torch.autograd.grad((yr * g).sum(), [ref_leaves[i] for i in used])
        errs.append(float((y.double() - yr).norm() / yr.norm()))
        errs += [float((a.double() - r).norm() / r.norm()) for a, r in zip(got, want)]
    return max(errs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", _CASES)
def test_gated_rms_norm_triton_strided_gpu(case, dtype):
    from transmamba.ops.norm import gated_rms_norm as ref
    from transmamba.ops.norm.triton import gated_rms_norm_triton

    gen = torch.Generator().manual_seed(2)
    d = 192 if case[2] is None else 96
    err = compare_strided(gated_rms_norm_triton, ref, dtype, "cuda", *case, gen, d=d)
    assert err < (1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", _CASES)
def test_gated_rms_norm_triton_gpu(case, dtype):
    from transmamba.ops.norm import gated_rms_norm as ref
    from transmamba.ops.norm.triton import gated_rms_norm_triton

    with_z, before, gs = case
    gen = torch.Generator().manual_seed(1)
    err = compare(gated_rms_norm_triton, ref, (4, 33, 192 if gs is None else 96), dtype, "cuda", with_z,
                  before, gs, gen)
    assert err < (1e-5 if dtype == torch.float32 else 2e-2)


_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    sys.path.insert(0, os.environ["TM_TEST_DIR"])
    from test_triton_norm import _CASES, compare, compare_strided
    from transmamba.ops.norm import gated_rms_norm
    from transmamba.ops.norm.triton import gated_rms_norm_triton
    gen = torch.Generator().manual_seed(0)
    out = [compare(gated_rms_norm_triton, gated_rms_norm, (3, 5, 24), torch.float32, "cpu", *c, gen)
           for c in _CASES]
    out += [compare_strided(gated_rms_norm_triton, gated_rms_norm, torch.float32, "cpu", *c, gen)
            for c in _CASES]
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_gated_rms_norm_triton_interpreter():
    env = dict(os.environ, TM_TEST_DIR=os.path.dirname(__file__), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    errs = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])
    assert max(errs) < 1e-5, errs
