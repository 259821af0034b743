# ruff: noqa: E501, B023  (closures are called inside the loop iteration that builds them)
"""GPU benchmark runner: one registry of cases, JSON + CSV + PNG out.

    python benchmarks/run.py --list
    python benchmarks/run.py --cases ceilings,ssd-op --out runs/bench
    transmamba bench --cases ssd-op --out runs/bench            (the same, through the CLI)
    python benchmarks/run.py --suite targets --out DIR --resume --time-budget 520
                      every headline number in one process: DIR/targets.json + DIR/targets.md (benchmarks/suite.py,
                      benchmarks/report.py)

Cases (each writes <out>/<case>.json, .csv and, where a plot makes sense, .png):
    ceilings          measured device-to-device copy bandwidth and bf16 matmul rate (the two floors' rates)
    ssd-op            SSD forward and forward+backward: ours (Triton) vs mamba_ssm's mamba_chunk_scan_combined
                      (from .peers/, see ../shared/tools/peer-kernels.sh) vs fla's chunk_simple_gla (forward;
                      its backward is tried, benchmarks/peer_ops.py) vs the torch chunked reference, and causal
                      SDPA (16 heads x 128) at the same token count, at L = 1K..32K with b*L = 32K tokens, 64
                      heads x 64, d_state 128, 1 group, chunk 256, bf16; plus the floor (bytes / bandwidth,
                      FLOPs / matmul rate), agreement with mamba_ssm and fla, and each first call's seconds
    ssd-decode        one SSD decode step (state update + output) per layer: ours vs mamba_ssm's
                      selective_state_update vs torch, batch 1 / 16; bandwidth floor = state read + write
    train-step        model training step (fwd + bwd + AdamW) tokens/s and MFU at T = 2K / 8K for
                      transmamba-400m and same-size transformer / mamba2 / mamba2-hybrid
    decode            tokens/s of one decode step (eager / static / CUDA graph) on synthetically filled caches at
                      contexts 4K..128K, batch 1 / 16 / 64, with the bandwidth bound (benchmarks/decode_bench.py)
    decode-generate   generate() tokens/s after a 4K..32K prompt (prefill included in the setup), batch 1 / 16
    transpoint-sweep  training step time of a transmamba-400m-shaped model vs a constant TransPoint P at T = 8192

Every timing is a median of CUDA-event timings after warm-up (triton.testing.do_bench). Nothing here runs
without a CUDA GPU. Results name the GPU and the command that made them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, tuple[Callable[[argparse.Namespace], list[dict[str, Any]]], str]] = {}


def case(name: str, help_: str):
    def deco(fn):
        CASES[name] = (fn, help_)
        return fn

    return deco


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def bench_ms(fn: Callable[[], Any], warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of fn over CUDA events (triton's do_bench: warm-up and repeats in ms)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


_CEIL: dict[str, float] = {}


def ceilings() -> dict[str, float]:
    """Measured copy bandwidth (bytes read + written per s) and bf16 matmul FLOP/s, cached per process."""
    if not _CEIL:
        n = 1 << 30  # 1 GiB
        src = torch.randn(n // 4, device="cuda")
        dst = torch.empty_like(src)
        ms = bench_ms(lambda: dst.copy_(src))
        _CEIL["copy_GBps"] = 2 * n / ms / 1e6
        m = 8192
        a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        ms = bench_ms(lambda: a @ b)
        _CEIL["bf16_TFLOPs"] = 2 * m**3 / ms / 1e9
        del src, dst, a, b
        torch.cuda.empty_cache()
    return dict(_CEIL)


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


def load_mamba_ssm():
    """mamba_ssm's Triton SSD kernels from .peers/ (None when absent or broken)."""
    peers = ROOT / ".peers"
    if str(peers) not in sys.path:
        sys.path.insert(0, str(peers))
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as err:  # noqa: BLE001 - peers are optional
        print(f"mamba_ssm peer unavailable: {err!r}")
        return None
    return {"chunk_scan_combined": mamba_chunk_scan_combined, "selective_state_update": selective_state_update}


# ---------------------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------------------


@case("ceilings", "measured copy bandwidth and bf16 matmul rate")
def run_ceilings(args) -> list[dict[str, Any]]:
    return [ceilings()]


def _ssd_inputs(b, l, h, p, g, n, dtype=torch.bfloat16):
    dev = "cuda"
    x = torch.randn(b, l, h, p, device=dev, dtype=dtype)
    dt = torch.randn(b, l, h, device=dev, dtype=torch.float32) * 0.5 - 1.0
    A = -torch.rand(h, device=dev) - 0.5
    B = torch.randn(b, l, g, n, device=dev, dtype=dtype)
    C = torch.randn(b, l, g, n, device=dev, dtype=dtype)
    D = torch.randn(h, device=dev)
    dt_bias = torch.randn(h, device=dev) * 0.3
    return x, dt, A, B, C, D, dt_bias


def ssd_floor(b, l, h, p, g, n, Q, ceil, elt=2) -> dict[str, float]:
    """Floor of one SSD call: fewest bytes (each input read once, each output written once) over the copy
    bandwidth, and the chunked algorithm's matmul FLOPs (causal half of the intra-chunk products) over the
    bf16 matmul rate. Backward: reads x, B, C, dt, dy, y; writes dx, dB, dC, ddt; about 2x the FLOPs."""
    tok = b * l
    fwd_bytes = tok * (2 * h * p * elt + 2 * g * n * elt + h * 4)  # x, y, B, C, dt (fp32)
    bwd_bytes = tok * (4 * h * p * elt + 4 * g * n * elt + 2 * h * 4)
    fwd_flops = tok * h * (2 * p * n + 2 * p * n + Q * p) + tok * g * Q * n
    bwd_flops = 2 * fwd_flops
    bw = ceil["copy_GBps"] * 1e9
    mm = ceil["bf16_TFLOPs"] * 1e12
    f_ms = max(fwd_bytes / bw, fwd_flops / mm) * 1e3
    fb_ms = max((fwd_bytes + bwd_bytes) / bw, (fwd_flops + bwd_flops) / mm) * 1e3
    return {"fwd_floor_ms": f_ms, "fwdbwd_floor_ms": fb_ms, "fwd_bytes": fwd_bytes, "fwd_flops": fwd_flops,
            "fwd_mem_ms": fwd_bytes / bw * 1e3, "fwd_mm_ms": fwd_flops / mm * 1e3}


@case("ssd-op", "SSD fwd / fwd+bwd: ours vs mamba_ssm vs fla (fwd; bwd tried) vs torch, and SDPA, L 1K..32K")
def run_ssd_op(args) -> list[dict[str, Any]]:
    from transmamba.ops.ssd.chunked import ssd_chunked
    from transmamba.ops.ssd.triton import ssd_triton

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peer_ops import load_fla

    ceil = ceilings()
    peer = load_mamba_ssm()
    fla = load_fla()
    rows = []
    sink = getattr(args, "row_sink", None)  # the suite keeps each row as it comes (a killed run keeps them)
    for l in [int(v) for v in args.lengths.split(",")]:
        rows.append(_ssd_op_row(l, args, peer, fla, ceil, ssd_triton, ssd_chunked))
        if sink is not None:
            sink(rows[-1])
        torch.cuda.empty_cache()
    return rows


def _first_call_s(fn) -> float:
    """Seconds of one synchronised call (the first call of a shape: Triton compile / autotune included)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def _ssd_op_row(l, args, peer, fla, ceil, ssd_triton, ssd_chunked) -> dict[str, Any]:
    """One L: ours, fla (fwd; its bwd is tried), SDPA, mamba_ssm, torch; every impl's first call is timed
    separately (`<impl>_first_fwd_s`, `<impl>_first_fwdbwd_s`: compile + autotune on a fresh machine)."""
    h, p, g, n, Q = 64, 64, 1, 128, 256
    b = max(1, args.tokens // l)
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(b, l, h, p, g, n)
    leaves = [x, dt, A, B, C, D, dt_bias]
    for t in leaves:
        t.requires_grad_()
    dy = torch.randn_like(x)
    kw = dict(chunk_size=Q, D=D, dt_bias=dt_bias, dt_softplus=True)
    impls = {"ours": lambda: ssd_triton(x, dt, A, B, C, **kw)}
    if peer is not None:
        impls["mamba_ssm"] = lambda: peer["chunk_scan_combined"](x, dt, A, B, C, **kw)
    if l <= args.torch_max_len:
        impls["torch_chunked"] = lambda: ssd_chunked(x, dt, A, B, C, **kw)
    row: dict[str, Any] = {"L": l, "batch": b, "heads": h, "headdim": p, "d_state": n, "groups": g,
                           "chunk": Q, "dtype": "bf16"}
    row.update(ssd_floor(b, l, h, p, g, n, Q, ceil))
    outs = {}
    for name, fn in impls.items():
        try:
            row[f"{name}_first_fwd_s"] = _first_call_s(lambda fn=fn: _nograd(fn))
            print(f"  ssd-op L={l} {name}: first forward call {row[f'{name}_first_fwd_s']:.1f} s")
            with torch.no_grad():
                outs[name] = fn().float()
            row[f"{name}_fwd_ms"] = bench_ms(lambda fn=fn: _nograd(fn))
            row[f"{name}_first_fwdbwd_s"] = _first_call_s(
                lambda fn=fn: torch.autograd.grad(fn(), leaves, dy, allow_unused=True))
            row[f"{name}_fwdbwd_ms"] = bench_ms(
                lambda fn=fn: torch.autograd.grad(fn(), leaves, dy, allow_unused=True))
        except Exception as err:  # noqa: BLE001 - record and keep going
            row[f"{name}_error"] = repr(err)[:300]
            traceback.print_exc()
        torch.cuda.empty_cache()
        print(f"  ssd-op L={l} {name}: " + json.dumps({k: round(v, 4) for k, v in row.items()
                                                      if k.startswith(name) and isinstance(v, float)}))
        if name == "ours":  # the peers without a long first compile come before mamba_ssm's
            if fla is not None:
                _ssd_op_fla(row, fla, x, dt, A, B, C, D, dt_bias, dy, outs.get("ours"))
            _ssd_op_sdpa(row, args.tokens, l)
    if "ours" in outs and "mamba_ssm" in outs:
        row["rel_err_vs_mamba_ssm"] = rel(outs["ours"], outs["mamba_ssm"])
        g1 = torch.autograd.grad(impls["ours"](), leaves, dy)
        g2 = torch.autograd.grad(impls["mamba_ssm"](), leaves, dy)
        for nm, a, r in zip(["dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias"], g1, g2):
            row[f"grad_rel_err_{nm}"] = rel(a, r)
    for name in [*impls, "fla"]:
        if f"{name}_fwd_ms" in row:
            row[f"{name}_fwd_frac_of_floor"] = row["fwd_floor_ms"] / row[f"{name}_fwd_ms"]
    for kind in ("fwd", "fwdbwd"):
        for peer_name in ("mamba_ssm", "fla"):
            if f"ours_{kind}_ms" in row and f"{peer_name}_{kind}_ms" in row:
                tag = "mamba" if peer_name == "mamba_ssm" else peer_name
                row[f"ours_over_{tag}_{kind}"] = row[f"ours_{kind}_ms"] / row[f"{peer_name}_{kind}_ms"]
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    return row


def _ssd_op_fla(row, fla, x, dt, A, B, C, D, dt_bias, dy, y_ours) -> None:
    """fla's chunk_simple_gla on the SSD's inputs (benchmarks/peer_ops.py: q = C, k = dt*B, v = x, g = dt*A,
    scale 1). Timed on the mapped inputs (the mapping is outside the timing). Agreement with ours: fla's
    output + D*x against our forward (`rel_err_fla_vs_ours`). Its backward is tried; a refusal is recorded
    (`fla_bwd_error`), a success is timed and its dv + D*dy compared with our dx."""
    from peer_ops import ssd_as_simple_gla

    with torch.no_grad():
        q, k, v, gg = ssd_as_simple_gla(x, dt, A, B, C, dt_bias=dt_bias, dt_softplus=True)
    fwd = lambda: fla(q, k, v, gg, scale=1.0)[0]  # noqa: E731
    try:
        row["fla_first_fwd_s"] = _first_call_s(lambda: _nograd(fwd))
        print(f"  ssd-op L={x.shape[1]} fla: first forward call {row['fla_first_fwd_s']:.1f} s")
        with torch.no_grad():
            y = fwd().float()
        if y_ours is not None:
            row["rel_err_fla_vs_ours"] = rel(y + x.detach().float() * D.detach().float()[:, None], y_ours)
        row["fla_fwd_ms"] = bench_ms(lambda: _nograd(fwd))
    except Exception as err:  # noqa: BLE001
        row["fla_error"] = repr(err)[:300]
        traceback.print_exc()
        return
    fl = [t.detach().requires_grad_() for t in (q, k, v, gg)]
    bwd = lambda: torch.autograd.grad(fla(*fl, scale=1.0)[0], fl, dy)  # noqa: E731
    try:
        row["fla_first_fwdbwd_s"] = _first_call_s(bwd)
        grads = bwd()
        row["fla_fwdbwd_ms"] = bench_ms(bwd)
        if y_ours is not None:
            dx_ours = torch.autograd.grad(
                _ssd_for_grad(x, dt, A, B, C, D, dt_bias), x, dy)[0]
            row["rel_err_fla_dv_vs_ours_dx"] = rel(grads[2].float() + dy.float() * D.detach().float()[:, None],
                                                    dx_ours)
    except Exception as err:  # noqa: BLE001 - fla's backward refuses on Hopper with some Triton versions
        row["fla_bwd_error"] = repr(err)[:400]
        print(f"  fla backward: {row['fla_bwd_error']}")


def _ssd_for_grad(x, dt, A, B, C, D, dt_bias):
    from transmamba.ops.ssd.triton import ssd_triton

    return ssd_triton(x, dt, A, B, C, chunk_size=256, D=D, dt_bias=dt_bias, dt_softplus=True)


def _ssd_op_sdpa(row, tokens: int, l: int, heads: int = 16, dim: int = 128) -> None:
    """Causal SDPA (default backend) at the same token count: batch = tokens / L, 16 heads x 128, bf16."""
    from peer_ops import sdpa_causal_flops, sdpa_inputs

    try:
        q, k, v = sdpa_inputs(tokens, l, heads, dim)
        fwd = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        do = torch.randn_like(q)
        row["sdpa_heads"], row["sdpa_headdim"] = heads, dim
        row["sdpa_fwd_ms"] = bench_ms(lambda: _nograd(fwd))
        row["sdpa_fwdbwd_ms"] = bench_ms(lambda: torch.autograd.grad(fwd(), (q, k, v), do))
        row["sdpa_fwd_TFLOPs"] = sdpa_causal_flops(q.shape[0], l, heads, dim) / row["sdpa_fwd_ms"] / 1e9
    except Exception as err:  # noqa: BLE001
        row["sdpa_error"] = repr(err)[:300]
        traceback.print_exc()
    torch.cuda.empty_cache()


def _nograd(fn):
    with torch.no_grad():
        return fn()


@case("ssd-accuracy", "bf16 SSD: ours and mamba_ssm against the fp64 torch reference, fwd and grads")
def run_ssd_accuracy(args) -> list[dict[str, Any]]:
    from transmamba.ops.ssd.chunked import ssd_chunked
    from transmamba.ops.ssd.triton import ssd_triton

    peer = load_mamba_ssm()
    h, p, g, n, Q = 64, 64, 1, 128, 256
    rows = []
    for b, l in ((2, 4096),):
        x, dt, A, B, C, D, dt_bias = _ssd_inputs(b, l, h, p, g, n)
        leaves = [x, dt, A, B, C, D, dt_bias]
        for t in leaves:
            t.requires_grad_()
        dy = torch.randn_like(x)
        kw = dict(chunk_size=Q, D=D, dt_bias=dt_bias, dt_softplus=True)
        ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
        yr = ssd_chunked(*ref_leaves[:5], chunk_size=Q, D=ref_leaves[5], dt_bias=ref_leaves[6], dt_softplus=True)
        gr = torch.autograd.grad(yr, ref_leaves, dy.double())
        impls = {"ours": lambda: ssd_triton(x, dt, A, B, C, **kw)}
        if peer is not None:
            impls["mamba_ssm"] = lambda: peer["chunk_scan_combined"](x, dt, A, B, C, **kw)
        for name, fn in impls.items():
            y = fn()
            gs = torch.autograd.grad(y, leaves, dy)
            row = {"impl": name, "batch": b, "L": l, "y": rel(y, yr)}
            for nm, a, r in zip(["dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias"], gs, gr):
                row[nm] = rel(a, r)
            print(json.dumps({k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in row.items()}))
            rows.append(row)
        del yr, gr, ref_leaves
        torch.cuda.empty_cache()
    return rows


@case("ssd-decode", "one SSD decode step per layer: ours vs mamba_ssm vs torch, batch 1/16")
def run_ssd_decode(args) -> list[dict[str, Any]]:
    from transmamba.ops.ssd import ssd_step
    from transmamba.ops.ssd.triton import ssd_step_triton

    ceil = ceilings()
    peer = load_mamba_ssm()
    h, p, g, n = 64, 64, 1, 128
    rows = []
    for b in (1, 16, 64):
        dev = "cuda"
        state = torch.randn(b, h, p, n, device=dev)
        x = torch.randn(b, h, p, device=dev, dtype=torch.bfloat16)
        dt = torch.randn(b, h, device=dev)
        A = -torch.rand(h, device=dev) - 0.5
        B = torch.randn(b, g, n, device=dev, dtype=torch.bfloat16)
        C = torch.randn(b, g, n, device=dev, dtype=torch.bfloat16)
        D = torch.randn(h, device=dev)
        bias = torch.randn(h, device=dev)
        kw = dict(D=D, dt_bias=bias, dt_softplus=True)
        state_bytes = 2 * state.numel() * 4
        row = {"batch": b, "heads": h, "headdim": p, "d_state": n, "state_MB": state.numel() * 4 / 1e6,
               "floor_us": state_bytes / (ceil["copy_GBps"] * 1e9) * 1e6}
        y_ours, new_ours = ssd_step_triton(state, x, dt, A, B, C, **kw)
        y_ref, new_ref = ssd_step(state, x, dt, A, B, C, **kw)
        row["rel_err_y"] = rel(y_ours, y_ref)
        row["rel_err_state"] = rel(new_ours, new_ref)
        s2 = state.clone()
        row["ours_us"] = 1e3 * bench_ms(lambda: ssd_step_triton(s2, x, dt, A, B, C, inplace=True, **kw))
        row["torch_us"] = 1e3 * bench_ms(lambda: ssd_step(state, x, dt, A, B, C, **kw))
        if peer is not None:
            sel = peer["selective_state_update"]
            s3 = state.clone()
            # mamba_ssm's layout: per-head tensors (b, h, p) x/dt/D/bias expanded as it expects
            dt_h = dt[:, :, None].expand(b, h, p)
            A_h = A[:, None, None].expand(h, p, n)
            D_h = D[:, None].expand(h, p)
            bias_h = bias[:, None].expand(h, p)
            try:
                y_m = sel(s3.clone(), x, dt_h, A_h, B, C, D=D_h, dt_bias=bias_h, dt_softplus=True)
                row["rel_err_vs_mamba_ssm"] = rel(y_ours, y_m)
                row["mamba_ssm_us"] = 1e3 * bench_ms(
                    lambda: sel(s3, x, dt_h, A_h, B, C, D=D_h, dt_bias=bias_h, dt_softplus=True))
            except Exception as err:  # noqa: BLE001
                row["mamba_ssm_error"] = repr(err)[:300]
        row["ours_frac_of_floor"] = row["floor_us"] / row["ours_us"]
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
        rows.append(row)
    return rows


# ---- Mamba-1 selective scan ------------------------------------------------------------------------------


def _scan_inputs(b, d, l, n, channel_last=False):
    """Mamba-1 scan inputs in bf16 (u, delta, z, B, C) with fp32 A, D, delta_bias; mamba_ssm's (b, d, l)
    layout, or channel-last views of (b, l, d) tensors as the Mamba1 layer passes them."""
    dev, bf = "cuda", torch.bfloat16

    def seq3(c, scale=1.0, shift=0.0):
        if channel_last:
            return (torch.randn(b, l, c, device=dev) * scale + shift).to(bf).transpose(1, 2)
        return (torch.randn(b, c, l, device=dev) * scale + shift).to(bf)

    u, delta, z, B, C = seq3(d), seq3(d, 0.5, -1.0), seq3(d), seq3(n), seq3(n)
    A = -torch.exp(torch.rand(d, n, device=dev) * 2.0)  # like -exp(A_log)
    D = torch.randn(d, device=dev)
    bias = torch.randn(d, device=dev) * 0.3
    return u, delta, A, B, C, D, z, bias


def scan_floor(b, l, d, n, ceil, elt=2) -> dict[str, float]:
    """Bandwidth floor of one scan call: u, delta, z, B, C read once and y written once (forward); the
    backward also reads u, delta, z, B, C and dy and writes du, ddelta, dz, dB, dC. Over the copy bandwidth."""
    tok = b * l
    fwd_bytes = tok * (4 * d * elt + 2 * n * elt)
    bwd_bytes = tok * (7 * d * elt + 4 * n * elt)
    bw = ceil["copy_GBps"] * 1e9
    return {"fwd_floor_ms": fwd_bytes / bw * 1e3, "fwdbwd_floor_ms": (fwd_bytes + bwd_bytes) / bw * 1e3,
            "fwd_bytes": fwd_bytes}


def _scan_op_layout(row, layout, b, d, l, n, args) -> None:
    """Time ours (and, in the (b, d, l) layout, the torch references) at one shape; fills `row`."""
    from transmamba.ops.selective_scan import selective_scan_chunked, selective_scan_ref
    from transmamba.ops.selective_scan.triton import selective_scan_triton

    u, delta, A, B, C, D, z, bias = _scan_inputs(b, d, l, n, channel_last=layout != "bdl")
    leaves = [u, delta, A, B, C, D, z, bias]
    for t in leaves:
        t.requires_grad_()
    dy = torch.randn_like(u)
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
    impls = {"ours": lambda: selective_scan_triton(u, delta, A, B, C, **kw)}
    if layout == "bdl":
        if l <= args.torch_max_len:
            impls["torch_chunked"] = lambda: selective_scan_chunked(u, delta, A, B, C, **kw)
        if l <= args.scan_seq_max_len:
            impls["torch_sequential"] = lambda: selective_scan_ref(u, delta, A, B, C, **kw)
    outs = {}
    for name, fn in impls.items():
        key = name if layout == "bdl" else f"{name}_{layout}"
        slow = name == "torch_sequential"
        try:
            with torch.no_grad():
                outs[name] = fn().float()
            row[f"{key}_fwd_ms"] = bench_ms(lambda fn=fn: _nograd(fn), warmup=2 if slow else 25,
                                            rep=20 if slow else 100)
            row[f"{key}_fwdbwd_ms"] = bench_ms(lambda fn=fn: torch.autograd.grad(fn(), leaves, dy),
                                               warmup=2 if slow else 25, rep=20 if slow else 100)
        except Exception as err:  # noqa: BLE001 - record and keep going
            row[f"{key}_error"] = repr(err)[:300]
            traceback.print_exc()
        torch.cuda.empty_cache()
    if "ours" in outs and "torch_chunked" in outs:
        row["rel_err_vs_torch_chunked"] = rel(outs["ours"], outs["torch_chunked"])


@case("scan-op", "Mamba-1 selective scan fwd / fwd+bwd: ours (Triton) vs torch chunked (and sequential), L 1K..32K")
def run_scan_op(args) -> list[dict[str, Any]]:
    ceil = ceilings()
    d, n = args.scan_dim, 16
    rows = []
    for l in [int(v) for v in args.lengths.split(",")]:
        b = max(1, args.scan_tokens // l)
        row: dict[str, Any] = {"L": l, "batch": b, "d_inner": d, "d_state": n, "dtype": "bf16"}
        row.update(scan_floor(b, l, d, n, ceil))
        for layout in ("bdl", "channel_last"):
            _scan_op_layout(row, layout, b, d, l, n, args)
            torch.cuda.empty_cache()
        for kind in ("fwd", "fwdbwd"):
            if f"ours_{kind}_ms" in row:
                row[f"ours_{kind}_frac_of_floor"] = row[f"{kind}_floor_ms"] / row[f"ours_{kind}_ms"]
            if f"ours_{kind}_ms" in row and f"torch_chunked_{kind}_ms" in row:
                row[f"torch_chunked_over_ours_{kind}"] = row[f"torch_chunked_{kind}_ms"] / row[f"ours_{kind}_ms"]
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
        rows.append(row)
    return rows


@case("scan-decode", "one Mamba-1 decode step (state update + output): ours vs mamba_ssm vs torch, batch 1/16/64")
def run_scan_decode(args) -> list[dict[str, Any]]:
    from transmamba.ops.selective_scan import selective_state_update
    from transmamba.ops.selective_scan.triton import selective_state_update_triton

    ceil = ceilings()
    peer = load_mamba_ssm()
    d, n = args.scan_dim, 16
    rows = []
    for b in (1, 16, 64):
        dev, bf = "cuda", torch.bfloat16
        state = torch.randn(b, d, n, device=dev)
        x, z = torch.randn(b, d, device=dev, dtype=bf), torch.randn(b, d, device=dev, dtype=bf)
        dt = torch.randn(b, d, device=dev, dtype=bf)
        A = -torch.exp(torch.rand(d, n, device=dev))
        B, C = torch.randn(b, n, device=dev, dtype=bf), torch.randn(b, n, device=dev, dtype=bf)
        D, bias = torch.randn(d, device=dev), torch.randn(d, device=dev)
        kw = dict(D=D, z=z, dt_bias=bias, dt_softplus=True)
        row: dict[str, Any] = {"batch": b, "d_inner": d, "d_state": n, "state_MB": state.numel() * 4 / 1e6,
                               "floor_us": 2 * state.numel() * 4 / (ceil["copy_GBps"] * 1e9) * 1e6}
        y_ours, new_ours = selective_state_update_triton(state, x, dt, A, B, C, **kw)
        y_ref, new_ref = selective_state_update(state, x, dt, A, B, C, **kw, impl="torch")
        row["rel_err_y"] = rel(y_ours, y_ref)
        row["rel_err_state"] = rel(new_ours, new_ref)
        s2 = state.clone()
        row["ours_us"] = 1e3 * bench_ms(lambda: selective_state_update_triton(s2, x, dt, A, B, C, **kw, inplace=True))
        s4 = state.clone()
        row["torch_us"] = 1e3 * bench_ms(lambda: selective_state_update(s4, x, dt, A, B, C, **kw, impl="torch",
                                                                        inplace=True))
        if peer is not None:
            sel = peer["selective_state_update"]
            try:
                s3 = state.clone()
                y_m = sel(s3, x, dt, A, B, C, **kw)
                row["rel_err_vs_mamba_ssm"] = rel(y_ours, y_m)
                row["mamba_ssm_us"] = 1e3 * bench_ms(lambda: sel(s3, x, dt, A, B, C, **kw))
            except Exception as err:  # noqa: BLE001
                row["mamba_ssm_error"] = repr(err)[:300]
        row["ours_frac_of_floor"] = row["floor_us"] / row["ours_us"]
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
        rows.append(row)
    return rows


# ---- model-level cases ------------------------------------------------------------------------------------


def _model(preset: str, **overrides):
    from transmamba.models import CausalLM, get_preset

    cfg = get_preset(preset, **overrides)
    return CausalLM(cfg)


TRAIN_MODELS = {  # label -> (preset, overrides); transformer-400m-eq has transmamba-400m's non-embedding size
    "transmamba-400m": ("transmamba-400m", {}),
    "transformer-400m-eq": ("transformer-400m-eq", {}),
    "transformer-400m-deep": ("transformer-400m", {"pattern": "*-" * 18}),
    "transformer-400m": ("transformer-400m", {}),
    "mamba2-400m": ("mamba2-400m", {}),
    "mamba2-hybrid-400m": ("mamba2-400m", {"pattern": "M-M-M-M-M-*-M-M-M-M-M-*-"}),
}


def _spec_bf16_flops() -> float | None:
    """The GPU's datasheet dense bf16 tensor-core rate (FLOP/s), for MFU in the usual sense; None if unknown."""
    name = gpu_name()
    if "H100" in name or "H200" in name:
        return 756e12 if "PCIe" in name else 989.4e12
    if "A100" in name:
        return 312e12
    return None


def _train_model(preset: str, over: dict, T: int, args):
    """The model built directly on the GPU (fast init), with the training-speed options of `args`."""
    from transmamba.models import CausalLM, get_preset

    cfg = get_preset(preset, max_seq_len=max(T, 8192), **over)
    with torch.device("cuda"):
        model = CausalLM(cfg)
    model.fused_loss = not args.no_fused_loss
    model.gradient_checkpointing = bool(args.checkpointing)
    for layer in model.transmamba_layers():  # auto: one full SSD when training on CUDA; off: converter path
        layer.full_ssd_in_training = {"auto": None, "on": True, "off": False}[args.tm_full_ssd]
    return model


def _train_one(preset: str, over: dict, T: int, tokens_per_step: int, args) -> dict[str, Any]:
    """One model's training step (bf16 autocast, fused AdamW): median ms of `--train-steps` steps after two
    warm-up steps, tokens/s, MFU, peak memory.

    mfu_spec = model FLOPs (`models/flops.py`: projections + LM head + attention + SSD, training = 3 x
    forward) x tokens/s / the GPU's datasheet dense bf16 rate (989.4 TFLOP/s on an H100 SXM); mfu = the same
    over the bf16 matmul rate measured in this run (an 8192^3 matmul); mfu_6n = 6 x non-embedding
    parameters x tokens/s over the measured rate (the earlier convention)."""
    from transmamba.models.flops import train_flops_per_token

    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    model = _train_model(preset, over, T, args)
    b = max(1, tokens_per_step // T)
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
    times = []
    for _ in range(args.train_steps):  # whole steps are long: CUDA events around each, the median
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        step()
        t1.record()
        t1.synchronize()
        times.append(t0.elapsed_time(t1))
    ms = sorted(times)[len(times) // 2]
    fl = train_flops_per_token(model.config, T)
    peak = ceilings()["bf16_TFLOPs"] * 1e12
    tok_s = b * T / ms * 1e3
    n_ne = model.num_parameters(exclude_embeddings=True)
    spec = _spec_bf16_flops()
    row = dict(batch=b, step_ms=ms, tokens_per_s=tok_s, mfu=fl["total"] * tok_s / peak,
               mfu_spec=fl["total"] * tok_s / spec if spec else None,
               mfu_6n=6.0 * n_ne * tok_s / peak, train_GFLOP_per_token=fl["total"] / 1e9,
               dense_GFLOP=fl["dense"] / 1e9, attention_GFLOP=fl["attention"] / 1e9, ssd_GFLOP=fl["ssd"] / 1e9,
               params=model.num_parameters(), non_embedding_params=n_ne,
               peak_mem_GB=torch.cuda.max_memory_allocated() / 1e9,
               fused_loss=model.fused_loss, checkpointing=model.gradient_checkpointing, tm_full_ssd=args.tm_full_ssd,
               step_ms_all=[round(t, 2) for t in times])
    return row


def _train_step_rows(presets: list[tuple[str, tuple[str, dict]]], lengths: list[int], tokens_per_step: int,
                     args) -> list[dict[str, Any]]:
    ceilings()
    rows = []
    for label, (preset, over) in presets:
        for T in lengths:
            row: dict[str, Any] = {"model": label, "preset": preset, "T": T, **{k: str(v) for k, v in over.items()}}
            try:
                row.update(_train_one(preset, over, T, tokens_per_step, args))
            except Exception as err:  # noqa: BLE001
                row["error"] = repr(err)[:300]
                traceback.print_exc()
            torch.cuda.empty_cache()
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
            rows.append(row)
    return rows


HYBRID_400M_PATTERN = "M-M-M-M-M-*-M-M-M-M-M-*-"  # 10 Mamba-2 + 2 attention mixers (Mamba-2-Hybrid 8B: 4 of 28)


@case("train-step", "training step tokens/s and MFU, transmamba-400m vs same-size transformer / mamba2 / hybrid")
def run_train_step(args) -> list[dict[str, Any]]:
    presets = [(m, TRAIN_MODELS[m]) for m in args.train_models.split(",") if m]
    return _train_step_rows(presets, [int(v) for v in args.train_lengths.split(",")], args.train_tokens, args)


@case("transpoint-sweep", "training step time vs a constant TransPoint P at T = 8192")
def run_transpoint_sweep(args) -> list[dict[str, Any]]:
    T = 8192
    presets = []
    for P in (0, 1024, 2048, 4096, 6144, 8192):
        presets.append((f"P={P}", ("transmamba-400m", {"transpoints": [P] * 12})))
    presets.append(("V9", ("transmamba-400m", {})))
    presets.append(("transformer-400m-eq", TRAIN_MODELS["transformer-400m-eq"]))
    return _train_step_rows(presets, [T], args.train_tokens, args)


def _decode_one(preset: str, ctx: int, b: int, new: int) -> dict[str, Any]:
    """generate() after a ctx-token prompt (greedy): prefill seconds and decode tokens/s.

    Every shape is warmed up first (a full call at the same batch and context, so kernel compilation and
    allocator growth stay out of the numbers); then prefill = one call with 1 new token, and decode time =
    (a call with new + 1 tokens) - (that prefill), each the median of 3 calls."""
    torch.manual_seed(0)
    model = _model(preset, max_seq_len=ctx + new + 16).cuda().to(torch.bfloat16).eval()
    ids = torch.randint(0, model.config.vocab_size, (b, ctx), device="cuda")

    def timed(n: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, greedy=True)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    with torch.no_grad():
        timed(new + 1)  # warm-up at this exact shape
        prefill = sorted(timed(1) for _ in range(3))[1]
        full = sorted(timed(new + 1) for _ in range(3))[1]
    dec = max(1e-9, full - prefill)
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return dict(prefill_s=prefill, decode_tokens_per_s=b * new / dec, ms_per_token=dec / new * 1e3,
                params=sum(p.numel() for p in model.parameters()),
                peak_mem_GB=torch.cuda.max_memory_allocated() / 1e9,
                # bandwidth bound of one step: the bf16 weights read once
                weights_bound_ms=wbytes / (ceilings()["copy_GBps"] * 1e9) * 1e3)


@case("decode", "one decode step tokens/s, eager vs CUDA graph, contexts 4K..128K, batch 1/16/64, vs bandwidth")
def run_decode(args) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decode_bench import run_decode_case

    return run_decode_case([int(v) for v in args.decode_contexts.split(",")],
                           [int(v) for v in args.decode_batches.split(",")], HYBRID_400M_PATTERN,
                           ceilings()["copy_GBps"], target_ms=args.decode_target_ms)


@case("decode-generate", "generate() tokens/s after 4K..32K prompts, batch 1/16")
def run_decode_generate(args) -> list[dict[str, Any]]:
    rows = []
    for preset in ("transmamba-400m", "transformer-400m", "mamba2-400m"):
        for ctx in [int(v) for v in args.decode_contexts.split(",")]:
            for b in (1, 16):
                row: dict[str, Any] = {"model": preset, "context": ctx, "batch": b}
                try:
                    row.update(_decode_one(preset, ctx, b, args.decode_new_tokens))
                except Exception as err:  # noqa: BLE001
                    row["error"] = repr(err)[:300]
                    traceback.print_exc()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------------


def write_outputs(name: str, rows: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    try:
        plot(name, rows, out, meta)
    except Exception as err:  # noqa: BLE001 - a plot never fails a run
        print(f"plot {name}: {err!r}")


def plot(name: str, rows: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = f"{name} on {meta.get('gpu', '?')}"
    if name == "ssd-op":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, kind in zip(axes, ("fwd", "fwdbwd")):
            for i, (impl, style) in enumerate((("ours", "o-"), ("mamba_ssm", "s--"), ("fla", "d-."), ("sdpa", "v-"),
                                               ("torch_chunked", "^:"))):
                pts = [(r["L"], r[f"{impl}_{kind}_ms"]) for r in rows if f"{impl}_{kind}_ms" in r]
                if pts:
                    ax.plot(*zip(*pts), style, color=f"C{i}",
                            label={"sdpa": "SDPA causal 16x128", "fla": "fla simple_gla"}.get(impl, impl))
            ax.plot([r["L"] for r in rows], [r[f"{kind}_floor_ms"] for r in rows], "k-", lw=0.8, label="floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length L (batch = 32K / L)")
            ax.set_ylabel("ms")
            ax.set_title(f"SSD {kind}")
            ax.legend(fontsize=7)
    elif name == "scan-op":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, kind in zip(axes, ("fwd", "fwdbwd")):
            for impl, style in (("ours", "o-"), ("ours_channel_last", "o--"), ("torch_chunked", "^:"),
                                ("torch_sequential", "x:")):
                pts = [(r["L"], r[f"{impl}_{kind}_ms"]) for r in rows if f"{impl}_{kind}_ms" in r]
                if pts:
                    ax.plot(*zip(*pts), style, label=impl)
            ax.plot([r["L"] for r in rows], [r[f"{kind}_floor_ms"] for r in rows], "k-", lw=0.8, label="floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"sequence length L (batch = {rows[0]['L'] * rows[0]['batch']} / L)")
            ax.set_ylabel("ms")
            ax.set_title(f"Mamba-1 selective scan {kind}")
            ax.legend(fontsize=7)
    elif name == "train-step":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for model in dict.fromkeys(r["model"] for r in rows):
            pts = sorted((r["T"], r["tokens_per_s"], r.get("mfu_spec") or r["mfu"]) for r in rows
                         if r["model"] == model and "mfu" in r)
            if pts:
                axes[0].plot([p[0] for p in pts], [p[1] / 1e3 for p in pts], "o-", label=model)
                axes[1].plot([p[0] for p in pts], [100 * p[2] for p in pts], "o-", label=model)
        for ax, lab in zip(axes, ("training K tokens/s", "MFU % (model FLOPs / datasheet bf16 peak)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"sequence length T ({rows[0].get('batch', 1) * rows[0]['T']} tokens per step)"
                          if rows and "batch" in rows[0] else "sequence length T")
            ax.set_ylabel(lab)
            ax.legend(fontsize=7)
    elif name == "transpoint-sweep":
        fig, ax = plt.subplots(figsize=(7, 4))
        pts = sorted((int(r["model"][2:]), r["step_ms"]) for r in rows
                     if r["model"].startswith("P=") and "step_ms" in r)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="TransMamba, constant P (all layers)")
        for r, style in zip([r for r in rows if not r["model"].startswith("P=") and "step_ms" in r], ("--", ":")):
            ax.axhline(r["step_ms"], ls=style, color="k" if style == "--" else "gray", label=r["model"])
        ax.set_xlabel("TransPoint P (T = 8192; P = 0: all SSM, P = 8192: all attention)")
        ax.set_ylabel("training step ms")
        ax.legend(fontsize=8)
    elif name == "decode":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from decode_bench import plot_decode

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        plot_decode(rows, axes)
    elif name == "decode-generate":
        fig, ax = plt.subplots(figsize=(7, 4))
        for model in sorted({r["model"] for r in rows}):
            for b in (1, 16):
                pts = [(r["context"], r["decode_tokens_per_s"]) for r in rows
                       if r["model"] == model and r["batch"] == b and "decode_tokens_per_s" in r]
                if pts:
                    ax.plot(*zip(*pts), "o-", label=f"{model} b={b}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context")
        ax.set_ylabel("decode tokens/s")
        ax.legend(fontsize=7)
    else:
        return
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="transmamba GPU benchmarks (one registry of cases)")
    ap.add_argument("--cases", default="ceilings,ssd-op", help="comma-separated case names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--out", default=None,
                    help="output folder for JSON/CSV/PNG (default: runs/bench)")
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768", help="ssd-op sequence lengths")
    ap.add_argument("--tokens", type=int, default=32768, help="ssd-op tokens per call (batch = tokens / L)")
    ap.add_argument("--torch-max-len", type=int, default=32768, help="ssd-op: torch reference up to this L")
    ap.add_argument("--scan-tokens", type=int, default=16384, help="scan-op tokens per call (batch = tokens / L)")
    ap.add_argument("--scan-dim", type=int, default=2048, help="scan-op / scan-decode d_inner (d_state 16)")
    ap.add_argument("--scan-seq-max-len", type=int, default=1024, help="scan-op: sequential reference up to this L")
    ap.add_argument("--train-lengths", default="2048,8192", help="train-step sequence lengths")
    ap.add_argument("--train-tokens", type=int, default=16384, help="train-step tokens per step")
    ap.add_argument("--train-rep-ms", type=int, default=2000, help="train-step: ms of timed repeats")
    ap.add_argument("--train-models", default="transmamba-400m,transformer-400m-eq,mamba2-400m,mamba2-hybrid-400m",
                    help="train-step / train-profile models (labels of TRAIN_MODELS)")
    ap.add_argument("--train-steps", type=int, default=5,
                    help="train-step: timed steps after 2 warm-up steps (median reported)")
    ap.add_argument("--no-fused-loss", action="store_true", help="train-*: materialise the logits (plain CE)")
    ap.add_argument("--checkpointing", action="store_true", help="train-*: activation checkpointing per block")
    ap.add_argument("--tm-full-ssd", default="auto", choices=["auto", "on", "off"],
                    help="train-*: TransMamba training path (off = converter + suffix SSD, the inference path)")
    ap.add_argument("--profile-T", type=int, default=8192, help="train-profile / sdpa-backends sequence length")
    ap.add_argument("--decode-contexts", default="4096,8192,16384,32768,65536,131072",
                    help="decode (and decode-generate) context lengths")
    ap.add_argument("--decode-batches", default="1,16,64", help="decode batch sizes")
    ap.add_argument("--decode-target-ms", type=float, default=150.0,
                    help="decode: wall-clock ms to spend on each timing (steps = target / first step)")
    ap.add_argument("--decode-new-tokens", type=int, default=64, help="decode: new tokens timed")
    ap.add_argument("--suite", default=None, choices=["targets"],
                    help="run a whole suite in one process instead of --cases (benchmarks/suite.py): every case "
                         "behind the headline numbers, per-case files plus OUT/targets.json and OUT/targets.md")
    ap.add_argument("--resume", action="store_true",
                    help="--suite: keep the units already done in OUT/targets.json and run the rest")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="--suite: seconds this process may take; units whose estimate would end later are "
                         "deferred to a --resume run")
    ap.add_argument("--suite-units", default=None, help="--suite: only these units (comma-separated)")
    ap.add_argument("--warm-workers", type=int, default=None,
                    help="--suite peer-warm: worker processes compiling the peers' kernels (default: cores - 2, <= 14)")
    ap.add_argument("--warm-timeout", type=float, default=200.0,
                    help="--suite peer-warm: seconds before the workers are stopped (what they compiled stays cached)")
    ap.add_argument("--report-only", action="store_true",
                    help="--suite: rebuild the per-case files and OUT/targets.md from OUT/targets.json (no GPU)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, (_, h) in CASES.items():
            print(f"{name:18s} {h}")
        return 0
    if args.out is None:
        args.out = str(ROOT / "runs" / "bench")
    if args.suite:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import suite

        if args.report_only:
            return suite.report_only(Path(args.out), write_outputs)
        suite.set_alloc_conf()  # before anything initialises CUDA
    if not torch.cuda.is_available():
        print("benchmarks need a CUDA GPU" + (" (the suite measures GPU kernels; --report-only rebuilds the "
                                              "report from an existing targets.json)" if args.suite else ""),
              file=sys.stderr)
        return 2
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    import triton

    if args.suite:
        def env_meta() -> dict[str, Any]:
            return {"gpu": gpu_name(), "torch": torch.__version__, "triton": triton.__version__,
                    "python": platform.python_version(), "cuda": torch.version.cuda}

        return suite.main_suite(args, argv, parser, CASES, env_meta, ceilings, write_outputs)

    out = Path(args.out)
    status = 0
    for name in [c for c in args.cases.split(",") if c]:
        if name not in CASES:
            print(f"unknown case {name!r}; known: {', '.join(CASES)}", file=sys.stderr)
            return 2
        t0 = time.time()
        rows = CASES[name][0](args)
        meta = {"case": name, "gpu": gpu_name(), "torch": torch.__version__, "triton": triton.__version__,
                "python": platform.python_version(), "command": " ".join(["python", "benchmarks/run.py", *argv]),
                "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "ceilings": dict(_CEIL),
                "seconds": round(time.time() - t0, 1)}
        write_outputs(name, rows, out, meta)
        print(f"== {name}: {len(rows)} rows in {meta['seconds']} s -> {out}/{name}.json")
        if any("error" in k for r in rows for k in r):
            status = 1
    return status


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
