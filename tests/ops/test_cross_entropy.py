"""linear_cross_entropy (chunked LM head + CE) against F.cross_entropy of the full logits, fwd and grads."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from transmamba.ops.cross_entropy import linear_cross_entropy


def _ref(h, w, y):
    return F.cross_entropy(h @ w.T, y, ignore_index=-100)


@pytest.mark.parametrize("n,chunk", [(37, 8), (16, 16), (5, 64)])
def test_matches_full_logits(n, chunk):
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, 12, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 12, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (n,), generator=g)
    y[::3] = -100
    out = linear_cross_entropy(h, w, y, chunk_size=chunk)
    ref = _ref(h, w, y)
    assert out.dtype == torch.float64 and torch.allclose(out, ref, rtol=1e-10)
    go = torch.tensor(1.7, dtype=torch.float64)
    gh, gw = torch.autograd.grad(out, (h, w), go)
    rh, rw = torch.autograd.grad(ref, (h, w), go)
    assert torch.allclose(gh, rh, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gw, rw, rtol=1e-9, atol=1e-12)


def test_all_ignored_is_zero_with_zero_grads():
    h = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(9, 4, requires_grad=True)
    y = torch.full((6,), -100)
    out = linear_cross_entropy(h, w, y, chunk_size=4)
    out.backward()
    assert out.item() == 0.0 and h.grad.abs().max() == 0 and w.grad.abs().max() == 0


def test_bf16_autocast_close_to_reference():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = torch.randn(30, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 30, (40,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy(h, w, y, chunk_size=16)
        ref = F.cross_entropy(F.linear(h, w).float(), y)
    assert out.dtype == torch.float32
    assert abs(out.item() - ref.item()) < 1e-3 * abs(ref.item())
    gh, gw = torch.autograd.grad(out, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert gh.dtype == h.dtype and gw.dtype == w.dtype
    assert (gh - rh).norm() / rh.norm() < 2e-2 and (gw - rw).norm() / rw.norm() < 2e-2


def test_bad_input():
    h, w = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(h, w, torch.zeros(4, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(h, w, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        linear_cross_entropy(h, w, torch.zeros(4, dtype=torch.int32))


def _compare_fp32(device: str, n: int = 29, V: int = 300, d: int = 16, chunk: int = 8, dtype=torch.float32):
    """Max relative error of loss, dh, dW against F.cross_entropy on full fp64 logits."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(n, d, generator=g).to(device=device, dtype=dtype).requires_grad_()
    w = torch.randn(V, d, generator=g).to(device=device, dtype=dtype).requires_grad_()
    y = torch.randint(0, V, (n,), generator=g).to(device)
    y[::4] = -100
    out = linear_cross_entropy(h, w, y, chunk_size=chunk)
    gh, gw = torch.autograd.grad(out, (h, w))
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = _ref(hr, wr, y)
    rh, rw = torch.autograd.grad(ref, (hr, wr))
    return max(abs(out.item() - ref.item()) / ref.item(), float((gh.double() - rh).norm() / rh.norm()),
               float((gw.double() - rw).norm() / rw.norm()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_rows_gpu():
    assert _compare_fp32("cuda", n=300, V=5000, d=64, chunk=128) < 1e-4  # fp32 compute (tf32 off by default)
    assert _compare_fp32("cuda", n=300, V=5000, d=64, chunk=128, dtype=torch.bfloat16) < 2e-2


_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, os.environ["TM_TEST_DIR"])
    from test_cross_entropy import _compare_fp32
    from transmamba.ops import backend
    backend.use_triton = lambda t: True  # the kernel on CPU tensors, under the interpreter
    print("RESULT", _compare_fp32("cpu"))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_rows_interpreter():
    env = dict(os.environ, TM_TEST_DIR=os.path.dirname(__file__), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    err = float([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1].split()[1])
    assert err < 1e-5
