# ruff: noqa: E501, B023  (closures are called inside the loop iteration that builds them)
"""GPU studies behind the kernels' launch settings and design choices: profiles and sweeps that reach into the
kernels (not part of the benchmark registry). They register extra cases on the benchmark runner (`benchmarks/run.py`):

    python experiments/gpu_studies.py --cases ssd-profile,ssd-tune --out runs/studies
    python experiments/gpu_studies.py --cases train-profile,sdpa-backends,conv-op --out runs/studies

Cases:
    ssd-profile     per-kernel times of one SSD fwd+bwd (ours and mamba_ssm), L = 8192, batch 4
    ssd-tune        greedy sweep of the SSD kernels' launch settings (ops/ssd/triton.py CONFIG)
    train-profile   per-op CUDA time of one training step (torch.profiler)
    conv-op         causal conv1d (Triton) on the models' in_proj slice, 16K tokens, bf16
    sdpa-backends   causal SDPA fwd+bwd per backend at the Transformer and TransMamba shapes
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]
from benchmarks.cases import case, option  # noqa: E402
from benchmarks.cases.models import TRAIN_MODELS, _train_model  # noqa: E402
from benchmarks.cases.ops import _ssd_inputs  # noqa: E402
from benchmarks.common import bench_ms, load_mamba_ssm, rel  # noqa: E402
from benchmarks.common import nograd as _nograd  # noqa: E402
from benchmarks.run import main  # noqa: E402

option("--profile-T", type=int, default=8192, help="train-profile / sdpa-backends sequence length")


@case("ssd-profile", "per-kernel times of one SSD fwd+bwd (ours and mamba_ssm), L = 8192, batch 4")
def run_ssd_profile(args) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    from transmamba.ops.ssd.triton import ssd_triton

    peer = load_mamba_ssm()
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(4, 8192, 64, 64, 1, 128)
    leaves = [x, dt, A, B, C, D, dt_bias]
    for t in leaves:
        t.requires_grad_()
    dy = torch.randn_like(x)
    kw = dict(chunk_size=256, D=D, dt_bias=dt_bias, dt_softplus=True)
    impls = {"ours": lambda: ssd_triton(x, dt, A, B, C, **kw)}
    if peer is not None:
        impls["mamba_ssm"] = lambda: peer["chunk_scan_combined"](x, dt, A, B, C, **kw)
    rows = []
    for name, fn in impls.items():
        for _ in range(3):
            torch.autograd.grad(fn(), leaves, dy)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                torch.autograd.grad(fn(), leaves, dy)
            torch.cuda.synchronize()
        for ev in prof.key_averages():
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if t > 0:
                rows.append({"impl": name, "kernel": ev.key[:80], "us_per_call": t / 5, "calls": ev.count / 5})
    rows.sort(key=lambda r: (r["impl"], -r["us_per_call"]))
    for r in rows:
        print(f"{r['impl']:10s} {r['us_per_call']:9.1f} us  x{r['calls']:.0f}  {r['kernel']}")
    return rows


TUNE_SPACE = {
    "state": [dict(BK=bk, warps=w, stages=s) for bk in (32, 64, 128) for w in (4, 8) for s in (2, 3)],
    "cb": [dict(B=bb, warps=w, stages=s) for bb in (64, 128) for w in (4, 8) for s in (2, 3)],
    "scan": [dict(BM=bm, BK=bk, warps=w, stages=s) for bm in (64, 128) for bk in (32, 64) for w in (4, 8)
             for s in (2, 3)],
    "dx": [dict(BJ=bj, BK=bk, warps=w, stages=s) for bj in (64, 128) for bk in (32, 64) for w in (4, 8)
           for s in (2, 3)],
    "dcb": [dict(B=bb, warps=w, stages=s) for bb in (32, 64, 128) for w in (4, 8) for s in (2, 3)],
    "bcs": [dict(BT=bt, BN=bn, warps=w, stages=s) for bt in (64, 128) for bn in (32, 64) for w in (4, 8)
            for s in (2,)],
}


@case("ssd-tune", "greedy sweep of the SSD kernels' launch settings (L = 8192, batch 4); prints the best")
def run_ssd_tune(args) -> list[dict[str, Any]]:
    from transmamba.ops.ssd import triton as S

    x, dt, A, B, C, D, dt_bias = _ssd_inputs(4, 8192, 64, 64, 1, 128)
    leaves = [x, dt, A, B, C, D, dt_bias]
    for t in leaves:
        t.requires_grad_()
    dy = torch.randn_like(x)
    kw = dict(chunk_size=256, D=D, dt_bias=dt_bias, dt_softplus=True)
    ref = S.ssd_triton(x, dt, A, B, C, **kw).detach().float()
    rows = []
    for key, space in TUNE_SPACE.items():
        fwd_only = key in ("state", "cb", "scan")
        best = None
        for cand in space:
            old = dict(S.CONFIG[key])
            S.CONFIG[key].update(cand)
            try:
                if fwd_only:
                    with torch.no_grad():
                        ok = rel(S.ssd_triton(x, dt, A, B, C, **kw), ref) < 1e-2
                    ms = bench_ms(lambda: _nograd(lambda: S.ssd_triton(x, dt, A, B, C, **kw)), rep=60)
                else:
                    ok = True
                    ms = bench_ms(lambda: torch.autograd.grad(S.ssd_triton(x, dt, A, B, C, **kw), leaves, dy),
                                  rep=60)
                row = {"kernel": key, **cand, "ms": ms, "ok": ok}
            except Exception as err:  # noqa: BLE001 - a config that does not compile is skipped
                row = {"kernel": key, **cand, "error": repr(err)[:200]}
            S.CONFIG[key] = old
            rows.append(row)
            if row.get("ok") and (best is None or row["ms"] < best[1]):
                best = (cand, row["ms"])
        if best is not None:
            S.CONFIG[key].update(best[0])
        else:
            print(f"tune {key}: no candidate ran")
        print(f"tune {key}: best {best}")
    print("TUNED CONFIG " + json.dumps(S.CONFIG))
    return rows


@case("train-profile", "per-op CUDA time of one training step (torch.profiler) and the SDPA kernels used")
def run_train_profile(args) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    T = args.profile_T
    rows = []
    for label in [m for m in args.train_models.split(",") if m]:
        preset, over = TRAIN_MODELS[label]
        torch.manual_seed(0)
        model = _train_model(preset, over, T, args)
        b = max(1, args.train_tokens // T)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        ids = torch.randint(0, model.config.vocab_size, (b, T), device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(ids, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) / 3 * 1e3
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
            torch.cuda.synchronize()
        def dev_us(e) -> float:
            return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)

        from torch.autograd import DeviceType

        evs = [e for e in prof.key_averages() if dev_us(e) > 0 and "Command Buffer" not in e.key]
        kernels = [e for e in evs if getattr(e, "device_type", None) == DeviceType.CUDA]
        total = sum(dev_us(e) for e in kernels)  # GPU busy time (kernels only; ops would count them twice)
        print(f"== {label} T={T} batch={b}: step {wall_ms:.1f} ms wall, {total / 1e3:.1f} ms of CUDA kernels")
        for kind, group, top in (("kernel", kernels, 45), ("op", [e for e in evs if e not in kernels], 30)):
            group.sort(key=lambda e: -dev_us(e))
            print(f"  -- top {kind}s (self CUDA time of one step)")
            for e in group[:top]:
                r = {"model": label, "T": T, "kind": kind, "op": e.key[:120], "cuda_ms": dev_us(e) / 1e3,
                     "share_of_kernels": dev_us(e) / total, "calls": e.count, "step_wall_ms": wall_ms}
                rows.append(r)
                print(f"  {r['cuda_ms']:8.2f} ms {100 * r['share_of_kernels']:5.1f}%  x{e.count:<4d} {r['op']}")
        glue = [e for e in prof.key_averages(group_by_input_shape=True)
                if e.key in ("aten::copy_", "aten::cat", "aten::add_", "aten::add", "aten::fill_") and dev_us(e) > 0]
        glue.sort(key=lambda e: -dev_us(e))
        print("  -- copies / cats / adds by input shapes")
        for e in glue[:25]:
            print(f"  {dev_us(e) / 1e3:8.2f} ms x{e.count:<4d} {e.key} {str(e.input_shapes)[:150]}")
        attn = [e.key for e in evs if any(s in e.key.lower() for s in ("flash", "fmha", "attention", "cudnn",
                                                                          "efficient", "sdpa"))]
        print("  attention kernels:", attn[:10])
        model = opt = ids = prof = None  # free before the next model
        torch.cuda.empty_cache()
    return rows


@case("conv-op", "causal conv1d (Triton) fwd and fwd+bwd on the models' in_proj slice, 16K tokens, bf16")
def run_conv_op(args) -> list[dict[str, Any]]:
    """The conv alone on the strided xBC view, and the in_proj split + conv Function (x, B, C out contiguous,
    one in_proj gradient) that Mamba2 uses on CUDA."""
    from transmamba.ops.conv.triton import causal_conv1d_triton
    from transmamba.ops.conv.triton_split import conv_split_triton

    rows = []
    for b, t in ((2, 8192), (1, 32768)):
        d, width = 7168, 4  # xBC channels of transmamba-400m, inside its 10288-wide in_proj output
        buf = torch.randn(b, t, 10288, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(d, width, device="cuda", requires_grad=True)
        bias = torch.randn(d, device="cuda", requires_grad=True)
        x = buf[..., 3072:3072 + d].transpose(1, 2)
        dy = torch.randn(b, t, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        sizes = (3072, 3072, 2048, 2048, 48)
        dparts = [torch.randn(b, t, n, device="cuda", dtype=torch.bfloat16) for n in sizes]
        gb = b * t * d * 2 / 1e9  # one bf16 pass over the activations
        fwd = bench_ms(lambda: _nograd(lambda: causal_conv1d_triton(x, w, bias, None, True)))
        fb = bench_ms(lambda: torch.autograd.grad(causal_conv1d_triton(x, w, bias, None, True), (buf, w, bias),
                                                  dy))
        sf = bench_ms(lambda: _nograd(lambda: conv_split_triton(buf, w, bias, None, sizes)))
        sfb = bench_ms(lambda: torch.autograd.grad(conv_split_triton(buf, w, bias, None, sizes), (buf, w, bias),
                                                   dparts))
        row = {"batch": b, "T": t, "dim": d, "fwd_ms": fwd, "fwdbwd_ms": fb,
               "split_fwd_ms": sf, "split_fwdbwd_ms": sfb, "fwd_floor_ms": 2 * gb / 3.0,
               "fwdbwd_floor_ms": 5 * gb / 3.0}  # fwd: read x, write y; bwd: read x, dy, write dx (3 TB/s)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}))
        rows.append(row)
    return rows


@case("sdpa-backends", "causal SDPA fwd+bwd per backend at the transformer and TransMamba shapes, T = 8192")
def run_sdpa_backends(args) -> list[dict[str, Any]]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    T = args.profile_T
    shapes = {  # name -> (heads, d_qk, d_v)
        "transformer h16 d96": (16, 96, 96),
        "transmamba g16 pad192": (16, 192, 192),
        "transmamba g16 qk128 v192": (16, 128, 192),
        "transmamba g16 d128": (16, 128, 128),
    }
    backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    rows = []
    for name, (h, dq, dv) in shapes.items():
        q = torch.randn(1, h, T, dq, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, h, T, dq, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, h, T, dv, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        flops = 2 * T * (T + 1) / 2 * h * (dq + dv)  # causal forward
        for bname, be in backends.items():
            row = {"shape": name, "T": T, "backend": bname}

            def fwd():
                if be is None:
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                with sdpa_kernel([be]):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

            try:
                o = fwd()
                do = torch.randn_like(o)
                row["fwd_ms"] = bench_ms(lambda: _nograd(fwd), rep=200)
                row["fwdbwd_ms"] = bench_ms(lambda: torch.autograd.grad(fwd(), (q, k, v), do), rep=300)
                row["fwd_TFLOPs"] = flops / row["fwd_ms"] / 1e9
                row["fwdbwd_TFLOPs"] = 3.5 * flops / row["fwdbwd_ms"] / 1e9  # bwd recomputes QK^T: 2.5x fwd
            except Exception as err:  # noqa: BLE001
                row["error"] = repr(err)[:200]
            print(json.dumps({kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in row.items()}))
            rows.append(row)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
