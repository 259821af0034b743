# ruff: noqa: E501, B023  (closures are called inside the loop iteration that builds them)
"""Op-level cases: SSD and the Mamba-1 scan, forward / backward and one decode step, against mamba_ssm, fla,
SDPA and the torch references, each with its floor (bytes over the measured copy bandwidth, FLOPs over the
measured bf16 matmul rate). Every timing is a median of CUDA-event timings after warm-up (triton's do_bench).

Peers: mamba_ssm's Triton kernels from the ignored .peers/ folder (../shared/tools/peer-kernels.sh) and fla's
`chunk_simple_gla` as an SSD. Mamba-2's SSD without the D skip,

    y_t = sum_{s <= t} (C_t . B_s) * exp(sum_{r=s+1}^{t} dt_r A) * dt_s * x_s,

is fla's simple GLA `o_t = scale * sum_{s <= t} (q_t . k_s) * exp(G_t - G_s) * v_s` (G_t = sum_{r <= t} g_r)
with q = C, k = dt * B, v = x, g = dt * A, scale = 1 (dt after bias and softplus; the groups of B/C repeated
over their heads, since fla has one q/k per value head). fla's layout is (batch, time, heads, dim), like ours.

`peer-warm` compiles the peers' autotuned kernels in parallel processes before anything is timed: on a fresh
machine mamba_ssm autotunes ~190 launch configurations over ~25 kernels and Triton compiles each one the
first time it is benchmarked, one after another (its first forward alone took > 140 s in one run). Worker w
of n keeps every n-th configuration of each autotuned kernel and runs the peers once at the three batch
specialisations of ssd-op (32, 8, 1); Triton keeps compiled kernels on disk, so the timed process finds them.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time
import traceback
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.cases import case, option
from benchmarks.common import ROOT, bench_ms, ceilings, load_fla, load_mamba_ssm, nograd, rel, show, wall_ms

option("--lengths", default="1024,2048,4096,8192,16384,32768", help="ssd-op / scan-op sequence lengths")
option("--tokens", type=int, default=32768, help="ssd-op tokens per call (batch = tokens / L)")
option("--torch-max-len", type=int, default=32768, help="ssd-op / scan-op: torch reference up to this L")
option("--scan-tokens", type=int, default=16384, help="scan-op tokens per call (batch = tokens / L)")
option("--scan-dim", type=int, default=2048, help="scan-op / scan-decode d_inner (d_state 16)")
option("--scan-seq-max-len", type=int, default=1024, help="scan-op: sequential reference up to this L")
option("--warm-workers", type=int, default=None,
       help="peer-warm: worker processes compiling the peers' kernels (default: cores - 2, <= 14)")
option("--warm-timeout", type=float, default=200.0,
       help="peer-warm: seconds before the workers are stopped (what they compiled stays cached)")


# ---- peers -----------------------------------------------------------------------------------------------


def ssd_as_simple_gla(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      dt_bias: torch.Tensor | None = None, dt_softplus: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SSD inputs -> fla simple-GLA inputs (q, k, v, g), see the module docstring.

    x (b, l, h, p), dt (b, l, h), A (h,), B/C (b, l, g, n) -> q, k (b, l, h, n) in x's dtype (contiguous),
    v = x, g (b, l, h) fp32 log-decay. k = dt * B is rounded to x's dtype (one rounding more than the SSD)."""
    h, g = x.shape[2], B.shape[2]
    if h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    d = dt.float()
    if dt_bias is not None:
        d = d + dt_bias.float()
    if dt_softplus:
        d = F.softplus(d)
    rep = h // g
    q = C.repeat_interleave(rep, dim=2).to(x.dtype).contiguous()  # (b, l, h, n)
    k = (B.repeat_interleave(rep, dim=2).float() * d[..., None]).to(x.dtype).contiguous()  # (b, l, h, n)
    return q, k, x.contiguous(), (d * A.float()).contiguous()  # g: (b, l, h)


def sdpa_inputs(tokens: int, length: int, heads: int = 16, dim: int = 128, dtype=torch.bfloat16,
                device: str = "cuda") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v (batch, heads, length, dim), batch = tokens / length, for causal SDPA."""
    shape = (max(1, tokens // length), heads, length, dim)
    return tuple(torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))


def sdpa_causal_flops(batch: int, length: int, heads: int, dim: int) -> float:
    """Forward matmul FLOPs of causal attention: QK^T and PV over the causal half, 2 * 2 * b*h*L(L+1)/2*d."""
    return 4.0 * batch * heads * length * (length + 1) / 2 * dim


# ---- cases -----------------------------------------------------------------------------------------------


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
    return wall_ms(fn, 1, "cuda") / 1e3


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
            row[f"{name}_first_fwd_s"] = _first_call_s(lambda fn=fn: nograd(fn))
            print(f"  ssd-op L={l} {name}: first forward call {row[f'{name}_first_fwd_s']:.1f} s")
            with torch.no_grad():
                outs[name] = fn().float()
            row[f"{name}_fwd_ms"] = bench_ms(lambda fn=fn: nograd(fn))
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
    show(row)
    return row


def _ssd_op_fla(row, fla, x, dt, A, B, C, D, dt_bias, dy, y_ours) -> None:
    """fla's chunk_simple_gla on the SSD's inputs (`ssd_as_simple_gla`: q = C, k = dt*B, v = x, g = dt*A,
    scale 1). Timed on the mapped inputs (the mapping is outside the timing). Agreement with ours: fla's
    output + D*x against our forward (`rel_err_fla_vs_ours`). Its backward is tried; a refusal is recorded
    (`fla_bwd_error`), a success is timed and its dv + D*dy compared with our dx."""
    with torch.no_grad():
        q, k, v, gg = ssd_as_simple_gla(x, dt, A, B, C, dt_bias=dt_bias, dt_softplus=True)
    fwd = lambda: fla(q, k, v, gg, scale=1.0)[0]  # noqa: E731
    try:
        row["fla_first_fwd_s"] = _first_call_s(lambda: nograd(fwd))
        print(f"  ssd-op L={x.shape[1]} fla: first forward call {row['fla_first_fwd_s']:.1f} s")
        with torch.no_grad():
            y = fwd().float()
        if y_ours is not None:
            row["rel_err_fla_vs_ours"] = rel(y + x.detach().float() * D.detach().float()[:, None], y_ours)
        row["fla_fwd_ms"] = bench_ms(lambda: nograd(fwd))
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
    try:
        q, k, v = sdpa_inputs(tokens, l, heads, dim)
        fwd = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        do = torch.randn_like(q)
        row["sdpa_heads"], row["sdpa_headdim"] = heads, dim
        row["sdpa_fwd_ms"] = bench_ms(lambda: nograd(fwd))
        row["sdpa_fwdbwd_ms"] = bench_ms(lambda: torch.autograd.grad(fwd(), (q, k, v), do))
        row["sdpa_fwd_TFLOPs"] = sdpa_causal_flops(q.shape[0], l, heads, dim) / row["sdpa_fwd_ms"] / 1e9
    except Exception as err:  # noqa: BLE001
        row["sdpa_error"] = repr(err)[:300]
        traceback.print_exc()
    torch.cuda.empty_cache()


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
        show(row)
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
            row[f"{key}_fwd_ms"] = bench_ms(lambda fn=fn: nograd(fn), warmup=2 if slow else 25,
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
        show(row)
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
        show(row)
        rows.append(row)
    return rows


# ---- peer-warm ---------------------------------------------------------------------------------------------

WARM_SHAPES = ((32, 1024), (8, 4096), (1, 32768))  # (batch, L) at 32K tokens: ssd-op's batch specialisations
PEER_PACKAGES = ("mamba_ssm.ops.triton", "fla.ops.common", "fla.ops.simple_gla", "fla.ops.utils")


def autotuners(packages=PEER_PACKAGES) -> list[Any]:
    """Every triton Autotuner defined at module level in the given packages (those that import)."""
    from triton.runtime.autotuner import Autotuner

    found: dict[int, Any] = {}
    for pkg_name in packages:
        try:
            pkg = importlib.import_module(pkg_name)
        except Exception as err:  # noqa: BLE001 - a missing peer is skipped
            print(f"peer-warm: {pkg_name} unavailable: {err!r}")
            continue
        mods = [pkg]
        for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            try:
                mods.append(importlib.import_module(f"{pkg_name}.{info.name}"))
            except Exception as err:  # noqa: BLE001
                print(f"peer-warm: {pkg_name}.{info.name} skipped: {err!r}")
        for mod in mods:
            found.update({id(o): o for o in vars(mod).values() if isinstance(o, Autotuner)})
    return list(found.values())


def keep_share(tuners: list[Any], worker: int, workers: int) -> int:
    """Worker `worker` of `workers` keeps configurations worker, worker + workers, ... of each autotuner
    (a kernel with fewer configurations than workers: the one at worker mod count). Returns how many kept."""
    kept = 0
    for t in tuners:
        cfgs = list(t.configs)
        t.configs = cfgs[worker::workers] or cfgs[worker % len(cfgs):worker % len(cfgs) + 1]
        kept += len(t.configs)
    return kept


def warm_worker(worker: int, workers: int) -> None:
    """One worker (workers = 0: the probe, every configuration, first shape only); its timings are dropped."""
    shapes = WARM_SHAPES if workers > 0 else WARM_SHAPES[:1]
    if workers > 0:
        tuners = autotuners()
        print(f"peer-warm worker {worker}/{workers}: {len(tuners)} autotuned kernels, "
              f"{keep_share(tuners, worker, workers)} configurations")
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as mamba
    except Exception as err:  # noqa: BLE001
        print(f"peer-warm: mamba_ssm unavailable: {err!r}")
        mamba = None
    fla = load_fla()
    impls = {"mamba_ssm": mamba}
    if worker == 0 and workers > 0:  # ours compiles beside the peers (not in the probe)
        from transmamba.ops.ssd.triton import ssd_triton

        impls["ours"] = ssd_triton
    for b, l in shapes:
        x, dt, A, B, C, D, bias = _ssd_inputs(b, l, 64, 64, 1, 128)
        for t in (x, dt, A, B, C, D, bias):
            t.requires_grad_()
        kw = dict(chunk_size=256, D=D, dt_bias=bias, dt_softplus=True)
        for name in [*(n for n, fn in impls.items() if fn is not None), *(["fla"] if fla is not None else [])]:
            t0 = time.time()
            try:
                if name == "fla":
                    with torch.no_grad():
                        fla(*ssd_as_simple_gla(x, dt, A, B, C, dt_bias=bias, dt_softplus=True), scale=1.0)
                else:
                    with torch.no_grad():
                        impls[name](x, dt, A, B, C, **kw)
                    impls[name](x, dt, A, B, C, **kw).float().sum().backward()
                torch.cuda.synchronize()
            except Exception as err:  # noqa: BLE001
                print(f"peer-warm worker {worker}: {name} b={b} failed: {err!r}"[:300])
            print(f"peer-warm worker {worker}: {name} b={b} L={l} {time.time() - t0:.1f} s", flush=True)
        del x, dt, A, B, C, D, bias
        torch.cuda.empty_cache()


def _spawn(worker: int, workers: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), str(ROOT / ".peers"),
                                         env.get("PYTHONPATH", "")])
    code = f"from benchmarks.cases.ops import warm_worker; warm_worker({worker}, {workers})"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def warm(workers: int, timeout_s: float, log=print, probe_s: float = 30.0) -> dict[str, Any]:
    """First a probe: one process runs the peers at the first shape with every configuration; if it ends
    within probe_s the kernels are already on disk and nothing more is done. Otherwise start the workers and
    wait at most timeout_s (then kill the rest). One row: seconds, return codes."""
    t0 = time.time()
    probe = _spawn(0, 0)
    try:
        out, _ = probe.communicate(timeout=probe_s)
        probe_ok = probe.returncode == 0
    except subprocess.TimeoutExpired:
        probe.kill()
        out, _ = probe.communicate()
        probe_ok = False
    probe_secs = time.time() - t0
    log(f"  peer-warm probe: rc={probe.returncode} in {probe_secs:.1f} s")
    if probe_ok:
        return {"workers": 0, "probe_s": probe_secs, "seconds": probe_secs, "probe_tail": (out or "")[-1500:],
                "note": "probe finished in time: kernels already cached, no workers started"}
    t0 = time.time()
    procs = [_spawn(w, workers) for w in range(workers)]
    rcs: list[int | None] = []
    outs: list[str] = []
    for pr in procs:
        try:
            out, _ = pr.communicate(timeout=max(1.0, timeout_s - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            pr.kill()
            out, _ = pr.communicate()
        rcs.append(pr.returncode)
        outs.append(out or "")
    for out in outs[:2]:
        for line in out.splitlines()[-8:]:
            log("  " + line)
    return {"workers": workers, "probe_s": probe_secs, "seconds": time.time() - t0 + probe_secs,
            "timeout_s": timeout_s, "returncodes": rcs, "timed_out": sum(1 for r in rcs if r not in (0,)),
            "worker0_tail": "\n".join(outs[0].splitlines()[-12:]) if outs else ""}


@case("peer-warm", "compile the peers' SSD kernels in parallel processes (nothing timed)")
def run_peer_warm(args) -> list[dict[str, Any]]:
    workers = getattr(args, "warm_workers", None) or max(1, min(14, (os.cpu_count() or 4) - 2))
    row = warm(workers, getattr(args, "warm_timeout", None) or 200.0)
    print(json.dumps({k: v for k, v in row.items() if k != "worker0_tail"}))
    return [row]
