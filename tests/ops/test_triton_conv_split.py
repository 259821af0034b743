"""In_proj split + conv as one Function (`ops/conv/triton_split.py`) against the torch reference
(torch.split + `causal_conv1d` + torch.split, fp64): outputs and the gradients of zxbcdt, weight and bias,
with and without documents (seq_idx: the two-launch backward; without: the time walk),
random inputs. Then whole layers and a small CausalLM (loss and every parameter
gradient) with the Function forced on against the reference path. GPU cases on CUDA; tiny fp32 cases
under TRITON_INTERPRET=1 (one subprocess)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch


def compare_split(device: str, seq_on: bool, width: int = 4, b: int = 2, l: int = 19,
                  sizes=(8, 16, 12, 12, 3), dtype=torch.float32, seed: int = 0) -> float:
    """Max relative error (outputs and grads) of the Triton Function against the fp64 reference."""
    from transmamba.ops.conv import causal_conv1d_split
    from transmamba.ops.conv.triton_split import conv_split_triton

    gen = torch.Generator().manual_seed(seed)
    cd = sum(sizes[1:4])
    buf = torch.randn(b, l, sum(sizes), generator=gen).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(cd, width, generator=gen) * 0.5).to(device).requires_grad_()
    bias = torch.randn(cd, generator=gen).to(device).requires_grad_()
    seq = torch.sort(torch.randint(0, 3, (b, l), generator=gen), dim=1).values.to(device) if seq_on else None
    outs = conv_split_triton(buf, w, bias, seq, sizes, silu=True)
    for t in outs[1:4]:
        assert t.is_contiguous(), "x, B, C must come out contiguous"
    z, dt = outs[0], outs[4]
    assert z.data_ptr() == buf.data_ptr() and z._base is not None and dt._base is not None, "z, dt: views"
    leaves = (buf, w, bias)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    refs = causal_conv1d_split(ref_leaves[0], ref_leaves[1], ref_leaves[2], sizes, seq_idx=seq)
    cot = [torch.randn(r.shape, generator=gen).to(device=device, dtype=torch.float64) for r in refs]
    got = torch.autograd.grad(sum((o.double() * c).sum() for o, c in zip(outs, cot)), leaves)
    want = torch.autograd.grad(sum((r * c).sum() for r, c in zip(refs, cot)), ref_leaves)
    errs = [float((o.double() - r).norm() / r.norm()) for o, r in zip(outs, refs)]
    errs += [float((a.double() - r).norm() / r.norm()) for a, r in zip(got, want)]
    return max(errs)


def compare_bwd_direct(device: str, b: int = 2, l: int = 23, d: int = 12, W: int = 4,
                       seed: int = 0) -> float:
    """`triton_bwd.conv1d_bwd_walk` called directly with documents (seq_idx) on a gapped input: dx, dw, dbias
    against the fp64 reference's gradients (`conv1d_bwd_into` routes documents to the two-launch backward,
    so this is the only test of the walk's document path)."""
    from transmamba.ops.conv import causal_conv1d
    from transmamba.ops.conv.triton_bwd import conv1d_bwd_walk

    gen = torch.Generator().manual_seed(seed)
    buf = torch.randn(b, l, d + 9, generator=gen, dtype=torch.float64)
    x = buf[..., 4:4 + d].transpose(1, 2)
    w = torch.randn(d, W, generator=gen, dtype=torch.float64)
    bias = torch.randn(d, generator=gen, dtype=torch.float64)
    seq = torch.sort(torch.randint(0, 5, (b, l), generator=gen), dim=1).values
    dy = torch.randn(b, l, d, generator=gen, dtype=torch.float64).transpose(1, 2)
    leaves = [t.clone().requires_grad_() for t in (x, w, bias)]
    y = causal_conv1d(leaves[0], leaves[1], leaves[2], activation="silu", seq_idx=seq)
    want = torch.autograd.grad(y, leaves, dy)
    dev = dict(device=device, dtype=torch.float32)
    dx = torch.empty(b, l, d, **dev).transpose(1, 2)
    dw, db = conv1d_bwd_walk(x.to(**dev), w.to(**dev).contiguous(), bias.to(**dev), seq.to(device), True,
                             dy.to(**dev), dx)
    return max(float((a.double().cpu() - r).norm() / r.norm()) for a, r in zip((dx, dw, db), want))


def compare_models(device: str, on: str = "force") -> float:
    """Mamba2, TransMamba (P inside the row, P past it, packed documents) and a small CausalLM: forward and
    every gradient with the split Function on (`on`: "1" = the normal dispatch, "force" = also for CPU
    tensors, under the interpreter) against off ("0": the reference split + conv)."""
    from transmamba.ops import conv

    original = conv._split_on_triton
    try:
        return _compare_models(device, on)
    finally:
        conv._split_on_triton = original


def _set_split(mode: str) -> None:
    from transmamba.ops import conv

    if not hasattr(conv, "_split_dispatch"):
        conv._split_dispatch = conv._split_on_triton  # the library's own rule
    rules = {"0": lambda z, w: False, "force": lambda z, w: True}
    conv._split_on_triton = rules.get(mode, conv._split_dispatch)


def _compare_models(device: str, on: str) -> float:
    from transmamba.layers import Mamba2, TransMamba
    from transmamba.models.config import ModelConfig
    from transmamba.models.lm import CausalLM

    torch.manual_seed(0)
    kw = dict(d_state=8, headdim=8, ngroups=2, chunk_size=4, device=device)
    x = torch.randn(2, 11, 16, device=device)
    dy = torch.randn(2, 11, 16, device=device)
    seq = torch.tensor([[0] * 4 + [1] * 7, [0] * 11], device=device)
    cases = [(Mamba2(16, **kw), {}), (TransMamba(16, transpoint=5, **kw), {}),
             (TransMamba(16, transpoint=20, **kw), {}),
             (TransMamba(16, transpoint=3, **kw), {"seq_idx": seq})]
    worst = 0.0
    for layer, extra in cases:
        res = []
        for mode in ("0", on):
            _set_split(mode)
            xi = x.clone().requires_grad_()
            y = layer(xi, **extra)
            res.append((y, torch.autograd.grad(y, [xi, *layer.parameters()], dy, allow_unused=True)))
        (y0, g0), (y1, g1) = res
        worst = max(worst, float((y1 - y0).norm() / y0.norm()))
        assert [a is None for a in g1] == [r is None for r in g0]
        worst = max([worst] + [float((a - r).norm() / r.norm()) for a, r in zip(g1, g0) if r is not None])
    cfg = ModelConfig(pattern="M-T-", transpoints=[4], vocab_size=37, d_model=16, n_heads=2, d_ff=24,
                      d_state=8, headdim=8, ngroups=2, chunk_size=4, max_seq_len=32)
    model = CausalLM(cfg).to(device)
    ids = torch.randint(0, 37, (2, 9), device=device)
    res = []
    for mode in ("0", on):
        _set_split(mode)
        out = model(ids, labels=ids)
        res.append((out.loss, torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)))
    (l0, g0), (l1, g1) = res
    worst = max(worst, abs(float(l1 - l0)) / abs(float(l0)))
    assert [a is None for a in g1] == [r is None for r in g0]
    worst = max([worst] + [float((a - r).norm() / r.norm()) for a, r in zip(g1, g0) if r is not None])
    return worst


def test_split_bad_input():
    from transmamba.ops.conv import causal_conv1d_split

    buf = torch.randn(1, 5, 10)
    with pytest.raises(ValueError, match="sum to"):
        causal_conv1d_split(buf, torch.randn(6, 4), None, (2, 2, 2, 2, 1))
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_split(buf, torch.randn(5, 4), None, (2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="zxbcdt"):
        causal_conv1d_split(buf[0], torch.randn(6, 4), None, (2, 2, 2, 2, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conv_split_gpu():
    sizes = (3072 // 16, 3072 // 16, 64, 64, 3)  # the model's layout, narrower
    for seq_on in (False, True):
        assert compare_split("cuda", seq_on, b=2, l=1000, sizes=sizes) < 1e-5
    assert compare_split("cuda", False, width=2, l=517, sizes=sizes, seed=1) < 1e-5
    assert compare_split("cuda", True, b=2, l=700, sizes=sizes, dtype=torch.bfloat16, seed=2) < 2e-2
    assert compare_split("cuda", False, l=701, sizes=sizes, dtype=torch.bfloat16, seed=4) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_walk_backward_documents_gpu():
    """The walk's document path (it once failed on the GPU: three names bound to one object before its
    loop were not carried; fixed, not yet routed to by default)."""
    assert compare_bwd_direct("cuda", l=1000, d=300) < 1e-5
    assert compare_bwd_direct("cuda", b=1, l=517, d=70, W=3, seed=1) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conv_split_models_gpu():
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        assert compare_models("cuda", on="1") < 1e-4
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, os.environ["TM_TEST_DIR"])
    from test_triton_conv_split import compare_bwd_direct, compare_split, compare_models
    from transmamba.ops.conv import triton as TC, triton_bwd as CB
    TC._BD, TC._BL = 8, 8  # several channel tiles (a partial one in B / C) and time blocks
    CB.WALK.update(BD=8, CH=8)
    cases = [(True, 4), (False, 2), (False, 3), (False, 4)]
    errs = [compare_split("cpu", seq_on, width=w, l=13, seed=i) for i, (seq_on, w) in enumerate(cases)]
    print("OP", max(errs + [compare_bwd_direct("cpu", seed=9)]))
    TC._BD, TC._BL = 32, 16  # the layers: fewer, larger tiles (interpreter time)
    CB.WALK.update(BD=32, CH=16)
    print("MODEL", compare_models("cpu"))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_conv_split_interpreter():
    env = dict(os.environ, TM_TEST_DIR=os.path.dirname(__file__), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    vals = dict(ln.split() for ln in proc.stdout.splitlines() if ln.startswith(("OP", "MODEL")))
    assert float(vals["OP"]) < 1e-5, vals
    assert float(vals["MODEL"]) < 1e-4, vals
