"""The decode step's skinny GEMM (`ops/triton/skinny_gemm.py`, `ops/skinny_linear.py`) against an fp32 / fp64
torch product of the same inputs: tiny fp32 cases under TRITON_INTERPRET=1 on the CPU, random and odd shapes
on the GPU (bf16 and fp32, one and several K-slices, with and without bias), and the dispatch rules."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from transmamba.ops.skinny_linear import skinny_enabled, skinny_linear

HAS_TRITON = importlib.util.find_spec("triton") is not None

_CASE = textwrap.dedent(
    """
    import torch
    from transmamba.ops.triton.skinny_gemm import skinny_linear_triton


    def run_case(M, N, K, bias, config, device, dtype, seed, act=None, reduce=True):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(M, K, generator=g).to(device, dtype)
        w = (torch.randn(N, K, generator=g) / K ** 0.5).to(device, dtype)
        b = torch.randn(N, generator=g).to(device, dtype) if bias else None
        y = skinny_linear_triton(x, w, b, config=config, act=act, reduce=reduce)
        ref = x.double().cpu() @ w.double().cpu().T + (b.double().cpu() if bias else 0)
        if act == "gelu":
            ref = torch.nn.functional.gelu(ref)
        elif act == "relu2":
            ref = ref.relu().square()
        if y.dim() == 3:  # reduce=False with a split K: fp32 partial sums
            assert not reduce and y.dtype == torch.float32 and y.shape[1:] == (M, N)
            y = y.sum(0)
        else:
            assert y.shape == (M, N) and y.dtype == dtype
        return float((y.double().cpu() - ref).abs().max() / ref.abs().max())
    """
)

_INTERP = _CASE + textwrap.dedent(
    """
    import json
    cfg = {"BN": 16, "BK": 16}
    res = [run_case(1, 19, 40, False, dict(cfg, split=1), "cpu", torch.float32, 0),
           run_case(5, 33, 70, True, dict(cfg, split=3), "cpu", torch.float32, 1),
           run_case(17, 16, 16, True, dict(cfg, split=1), "cpu", torch.float32, 2),
           run_case(3, 40, 50, False, None, "cpu", torch.float32, 3),
           run_case(4, 30, 48, True, dict(cfg, split=1), "cpu", torch.float32, 4, "gelu"),
           run_case(4, 30, 48, False, dict(cfg, split=3), "cpu", torch.float32, 5, "relu2"),
           run_case(2, 20, 64, False, dict(cfg, split=4), "cpu", torch.float32, 6, None, False)]
    print("RESULT" + json.dumps(res))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_skinny_gemm_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _INTERP], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][len("RESULT"):])
    assert max(res) < 1e-5, res


def test_skinny_linear_cpu_is_linear_and_checks_shapes():
    torch.manual_seed(0)
    lin = nn.Linear(24, 10)
    x = torch.randn(3, 24)
    assert not skinny_enabled(x, lin.weight)
    assert torch.equal(skinny_linear(x, lin), lin(x))
    with pytest.raises(ValueError, match=r"\(\.\.\., 24\)"):
        skinny_linear(torch.randn(3, 23), lin)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_skinny_gemm_bad_input():
    from transmamba.ops.triton.skinny_gemm import skinny_linear_triton

    with pytest.raises(ValueError, match="at most 64 rows"):
        skinny_linear_triton(torch.randn(65, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="share K"):
        skinny_linear_triton(torch.randn(2, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="contiguous last dim"):
        skinny_linear_triton(torch.randn(8, 2).T, torch.randn(4, 8))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_skinny_gemm_gpu(dtype):
    ns: dict = {}
    exec(_CASE, ns)  # noqa: S102 - the same case code as the interpreter test
    cases = [(16, 10288, 1536, False, None), (1, 1536, 3072, False, None), (64, 4096, 1536, True, None),
             (7, 1000, 777, True, None), (33, 129, 4100, False, {"split": 5}),
             (2, 3, 300, True, {"split": 1}),
             (16, 1536, 4096, False, {"BN": 32, "BK": 256, "split": 8}), (50, 5000, 96, True, {"BN": 128})]
    g = torch.Generator().manual_seed(7)
    for _ in range(3):  # random shapes
        M, N, K = (int(torch.randint(lo, hi, (1,), generator=g))
                   for lo, hi in ((1, 65), (1, 3000), (16, 3000)))
        cases.append((M, N, K, bool(torch.randint(0, 2, (1,), generator=g)), None))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for i, (M, N, K, bias, cfg) in enumerate(cases):
        err = ns["run_case"](M, N, K, bias, cfg, "cuda", dtype, i)
        assert err < tol, (M, N, K, bias, cfg, err)
    for i, (act, reduce) in enumerate([("gelu", True), ("relu2", True), (None, False)]):
        for M, N, K, split in [(16, 4096, 1536, 3), (5, 999, 1000, 1), (64, 1536, 4096, 8)]:
            err = ns["run_case"](M, N, K, False, {"split": split}, "cuda", dtype, 50 + i, act, reduce)
            assert err < tol, (M, N, K, split, act, reduce, err)


@pytest.mark.gpu
@torch.no_grad()
def test_skinny_linear_dispatch_gpu(monkeypatch):
    torch.manual_seed(0)
    lin = nn.Linear(300, 500, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(4, 2, 300, device="cuda", dtype=torch.bfloat16)
    assert skinny_enabled(x, lin.weight)
    y = skinny_linear(x, lin)
    ref = x.float() @ lin.weight.float().T + lin.bias.float()
    assert y.shape == (4, 2, 500) and float((y.float() - ref).abs().max() / ref.abs().max()) < 1e-2
    assert not skinny_enabled(torch.randn(65, 300, device="cuda", dtype=torch.bfloat16), lin.weight)
    with torch.enable_grad():  # a weight that needs a gradient goes to torch (no backward here)
        assert not skinny_enabled(x, lin.weight)
    monkeypatch.setenv("TRANSMAMBA_DISABLE_TRITON", "1")
    assert not skinny_enabled(x, lin.weight)
    assert torch.equal(skinny_linear(x, lin), lin(x))
