"""The static decode step's fused kernels against the unfused torch ops, under TRITON_INTERPRET=1 on the CPU
and on the GPU: `ops/ssm_decode/triton.py` (conv update + SSD step + gated RMSNorm in one kernel) and
`ops/norm/triton_add.py` (residual add + RMSNorm)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None

_CASE = textwrap.dedent(
    """
    import torch
    from transmamba.layers.mamba2 import Mamba2
    from transmamba.ops.conv import causal_conv1d_update
    from transmamba.ops.ssd import ssd_step
    from transmamba.ops.ssm_decode.triton import mamba2_decode_triton


    def run_case(b, d_model, headdim, ngroups, d_state, device, dtype, seed, kernel=None):
        torch.manual_seed(seed)
        layer = Mamba2(d_model, d_state=d_state, headdim=headdim, ngroups=ngroups).to(device)
        with torch.no_grad():
            for p in (layer.dt_bias, layer.D, layer.conv1d.bias, layer.norm.weight):
                p.add_(torch.randn_like(p) * 0.3)
        layer = layer.to(dtype)
        zx = torch.randn(b, layer.in_proj.out_features, device=device, dtype=dtype)
        conv = torch.randn(b, layer.conv_dim, layer.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.randn(b, layer.nheads, headdim, d_state, device=device, dtype=dtype) * 0.5
        with torch.no_grad():
            # unfused reference
            z, xbc, dt = layer.split_proj(zx)
            xbc, conv_ref = causal_conv1d_update(xbc.cpu().double(), conv.cpu().double(),
                                                 layer.conv_weight().cpu().double(),
                                                 layer.conv1d.bias.cpu().double(), activation="silu")
            x, B, C = layer.split_xbc(xbc)
            y, ssm_ref = ssd_step(ssm.cpu().double(), x, dt.cpu().double(), layer.A.cpu().double(), B, C,
                                  D=layer.D.cpu().double(), dt_bias=layer.dt_bias.cpu().double(),
                                  dt_softplus=True)
            norm = layer.norm.cpu().double()
            out_ref = norm(y.reshape(b, layer.d_inner), z.cpu().double())
            layer.norm.to(device=device, dtype=dtype)
            conv_t = conv.transpose(1, 2).contiguous().transpose(1, 2)  # a strided conv state
            seq = torch.arange(b, device=device) * 7
            out = mamba2_decode_triton(zx, conv_t, layer.conv_weight(), layer.conv1d.bias, ssm, layer.A,
                                       layer.dt_bias, layer.D, layer.norm.weight, layer.norm.eps, ngroups,
                                       headdim, kernel=kernel, seqlen_offset=seq)
            seq_ok = torch.equal(seq.cpu(), torch.arange(b) * 7 + 1)
        def rel(a, r):
            a, r = a.cpu().double(), r.double()
            return float((a - r).norm() / r.norm())
        return {"out": rel(out, out_ref), "conv": rel(conv_t, conv_ref), "ssm": rel(ssm, ssm_ref),
                "seqlen_offset": 0.0 if seq_ok else 1.0}


    def add_norm_case(rows, dim, device, dtype, seed):
        from transmamba.ops.norm import rms_norm
        from transmamba.ops.norm.triton_add import add_rms_norm_triton
        g = torch.Generator().manual_seed(seed)
        h, d = (torch.randn(rows, dim, generator=g).to(device, dtype) for _ in range(2))
        w = (1 + 0.3 * torch.randn(dim, generator=g)).to(device, dtype)
        h2, n2 = add_rms_norm_triton(h, d, w, 1e-5)
        ref_h = h + d
        ref_n = rms_norm(ref_h.cpu().double(), w.cpu().double(), 1e-5)
        return {"h": float((h2 - ref_h).abs().max()),
                "n": float((n2.cpu().double() - ref_n).norm() / ref_n.norm())}


    def embed_norm_case(rows, vocab, dim, device, dtype, seed):
        # h = table[ids], n = rms_norm(h) * w in one launch
        from transmamba.ops.norm import rms_norm
        from transmamba.ops.norm.triton_add import embed_rms_norm_triton
        g = torch.Generator().manual_seed(seed)
        table = torch.randn(vocab, dim, generator=g).to(device, dtype)
        ids = torch.randint(0, vocab, (rows,), generator=g).to(device)
        w = (1 + 0.3 * torch.randn(dim, generator=g)).to(device, dtype)
        h, n = embed_rms_norm_triton(ids, table, w, 1e-5)
        ref_n = rms_norm(table[ids].cpu().double(), w.cpu().double(), 1e-5)
        return {"h": float((h - table[ids]).abs().max()),
                "n": float((n.cpu().double() - ref_n).norm() / ref_n.norm())}


    def add_norm_parts_case(parts, rows, dim, device, dtype, seed):
        # d given as fp32 split-K partials (S, rows, dim): summed, rounded to h's dtype, then as above
        from transmamba.ops.norm import rms_norm
        from transmamba.ops.norm.triton_add import add_rms_norm_triton
        g = torch.Generator().manual_seed(seed)
        h = torch.randn(rows, dim, generator=g).to(device, dtype)
        d = torch.randn(parts, rows, dim, generator=g).to(device)
        w = (1 + 0.3 * torch.randn(dim, generator=g)).to(device, dtype)
        h2, n2 = add_rms_norm_triton(h, d, w, 1e-5)
        ref_h = h + d.sum(0).to(dtype)
        ref_n = rms_norm(ref_h.cpu().double(), w.cpu().double(), 1e-5)
        return {"h": float((h2.double() - ref_h.double()).abs().max() / ref_h.double().abs().max()),
                "n": float((n2.cpu().double() - ref_n).norm() / ref_n.norm())}
    """
)

_INTERP = _CASE + textwrap.dedent(
    """
    import json
    res = [run_case(2, 32, 8, 2, 16, "cpu", torch.float32, 0),
           run_case(3, 24, 16, 1, 8, "cpu", torch.float32, 1), add_norm_case(3, 40, "cpu", torch.float32, 2),
           run_case(3, 24, 16, 1, 8, "cpu", torch.float32, 1, "group"),
           run_case(2, 64, 16, 2, 16, "cpu", torch.float32, 3, "group"),
           run_case(2, 24, 12, 2, 8, "cpu", torch.float32, 5, "head"),
           add_norm_parts_case(3, 2, 40, "cpu", torch.float32, 4),
           embed_norm_case(3, 11, 40, "cpu", torch.float32, 6)]
    print("RESULT" + json.dumps(res))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_fused_mamba2_decode_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _INTERP], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][len("RESULT"):])
    for r in res:
        assert max(r.values()) < 1e-5, r


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_mamba2_decode_gpu(dtype):
    ns: dict = {}
    exec(_CASE, ns)  # noqa: S102 - the same case code as the interpreter test
    for args in [(4, 96, 64, 3, 128), (16, 1536, 64, 16, 128), (1, 64, 16, 1, 32), (3, 96, 32, 2, 64),
                 (2, 80, 20, 2, 16)]:
        for kernel in ("head", "group"):
            r = ns["run_case"](*args, "cuda", dtype, 3, kernel)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            assert max(r.values()) < tol, (args, kernel, r)
    r = ns["add_norm_case"](16, 1536, "cuda", dtype, 4)
    assert r["h"] == 0.0 and r["n"] < (1e-5 if dtype == torch.float32 else 1e-2), r
    r = ns["add_norm_parts_case"](6, 16, 1536, "cuda", dtype, 5)
    assert max(r.values()) < (1e-5 if dtype == torch.float32 else 1e-2), r
    r = ns["embed_norm_case"](16, 151936, 1536, "cuda", dtype, 6)
    assert r["h"] == 0.0 and r["n"] < (1e-5 if dtype == torch.float32 else 1e-2), r
