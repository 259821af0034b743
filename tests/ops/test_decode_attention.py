"""`ops.decode_attention`: the torch version against an explicit per-row softmax, the Triton split-K kernel
against the torch version (under TRITON_INTERPRET=1 on the CPU, and on the GPU)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from transmamba.ops.attention.decode import decode_attention, decode_attention_torch

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _inputs(b, hq, hkv, dk, dv, L, gen, dtype=torch.float32, device="cpu"):
    q = torch.randn(b, hq, dk, generator=gen)
    k = torch.randn(b, L, hkv, dk, generator=gen)
    v = torch.randn(b, L, hkv, dv, generator=gen)
    lengths = torch.randint(1, L + 1, (b,), generator=gen)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)] + [lengths.to(device)]


def _explicit(q, k, v, lengths, scale):
    """Row by row, head by head: softmax(scale q·k[:len]) v[:len] in fp64."""
    b, hq, _ = q.shape
    G = hq // k.shape[2]
    out = torch.empty(b, hq, v.shape[-1], dtype=torch.float64)
    for r in range(b):
        n = int(lengths[r])
        for i in range(hq):
            w = (k[r, :n, i // G].double() @ q[r, i].double() * scale).softmax(0)
            out[r, i] = w @ v[r, :n, i // G].double()
    return out


def test_torch_version_equals_explicit_softmax():
    gen = torch.Generator().manual_seed(0)
    for b, hq, hkv, dk, dv, L in [(3, 4, 2, 8, 12, 9), (2, 3, 3, 16, 16, 1), (1, 6, 1, 4, 4, 20)]:
        q, k, v, lengths = _inputs(b, hq, hkv, dk, dv, L, gen)
        out = decode_attention(q, k, v, lengths, scale=0.7)
        assert out.shape == (b, hq, dv)
        assert (out.double() - _explicit(q, k, v, lengths, 0.7)).abs().max() < 1e-5
    # positions past a row's length never matter
    k2, v2 = k.clone(), v.clone()
    k2[0, int(lengths[0]):] = 1e4
    v2[0, int(lengths[0]):] = -1e4
    out2 = decode_attention(q, k2, v2, lengths, scale=0.7)
    assert torch.equal(out2, decode_attention(q, k, v, lengths, scale=0.7))


def test_bad_arguments():
    q, k, v, lengths = _inputs(2, 4, 2, 8, 8, 5, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="kv_heads"):
        decode_attention(q[:, :3], k, v, lengths)
    with pytest.raises(ValueError, match="lengths"):
        decode_attention(q, k, v, lengths[:1])
    with pytest.raises(ValueError, match="integer"):
        decode_attention(q, k, v, lengths.float())
    with pytest.raises(ValueError, match="impl"):
        decode_attention(q, k, v, lengths, impl="flash")


_INTERP = textwrap.dedent(
    """
    import json, os
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import transmamba.ops.attention.triton_decode as DA
    from transmamba.ops.attention.decode import decode_attention_torch
    DA.CONFIG["BN"] = 16  # several blocks per split and several splits per row
    gen = torch.Generator().manual_seed(0)
    out = []
    shapes = [(2, 4, 2, 16, 24, 37, 3), (3, 2, 2, 32, 32, 70, None), (1, 3, 1, 8, 40, 5, 2)]
    for b, hq, hkv, dk, dv, L, ns in shapes:
        q, k, v = torch.randn(b, hq, dk, generator=gen), torch.randn(b, L, hkv, dk, generator=gen), \\
            torch.randn(b, L, hkv, dv, generator=gen)
        lengths = torch.randint(1, L + 1, (b,), generator=gen)
        lengths[0] = L
        kk = torch.randn(b, hkv, L, dk, generator=gen).transpose(1, 2)  # strided cache (last dim contiguous)
        for kc in (k, kk):
            o = DA.decode_attention_triton(q, kc, v, lengths, 0.3, nsplit=ns)
            out.append(float((o - decode_attention_torch(q, kc, v, lengths, 0.3)).abs().max()))
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernel_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _INTERP], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    errs = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][len("RESULT"):])
    assert len(errs) == 6 and max(errs) < 1e-5, errs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_gpu(dtype):
    gen = torch.Generator().manual_seed(2)
    shapes = [(3, 8, 2, 96, 96, 1000), (2, 16, 16, 128, 192, 777), (5, 4, 4, 64, 64, 4100)]
    for b, hq, hkv, dk, dv, L in shapes:
        q, k, v, lengths = _inputs(b, hq, hkv, dk, dv, L, gen, dtype=dtype, device="cuda")
        out = decode_attention(q, k, v, lengths, scale=dk**-0.5)
        ref = decode_attention_torch(q.double(), k.double(), v.double(), lengths, dk**-0.5)
        err = ((out.double() - ref).norm() / ref.norm()).item()
        assert err < (1e-5 if dtype == torch.float32 else 2e-2), (b, hq, hkv, dk, dv, L, err)
