"""Sweep the Triton selective scan's launch settings (`ops/selective_scan/triton.py: CONFIG`) at one shape.

    python experiments/scan_tune.py --batch 4 --seqlen 4096 --dim 2048 \\
        --configs '[{}, {"tile": {"TT": 64}}, {"fwd": {"BD": 4}}]'

Each config is merged into the defaults (per kernel); prints one JSON line per config with the forward and
forward+backward medians (ms, triton.testing.do_bench) and the relative difference of y and du to the
defaults' results. Needs a CUDA GPU. bf16 u/delta/z/B/C, fp32 A/D/delta_bias, (b, d, l) layout unless
--channel-last.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _inputs(b, d, l, n, channel_last):
    """bf16 u, delta, z, B, C and fp32 A, D, delta_bias (as the scan-op case, benchmarks/cases/ops.py)."""
    dev, bf = "cuda", torch.bfloat16

    def seq3(c, scale=1.0, shift=0.0):
        if channel_last:
            return (torch.randn(b, l, c, device=dev) * scale + shift).to(bf).transpose(1, 2)
        return (torch.randn(b, c, l, device=dev) * scale + shift).to(bf)

    u, delta, z, B, C = seq3(d), seq3(d, 0.5, -1.0), seq3(d), seq3(n), seq3(n)
    A = -torch.exp(torch.rand(d, n, device=dev) * 2.0)
    return u, delta, A, B, C, torch.randn(d, device=dev), z, torch.randn(d, device=dev) * 0.3


def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--channel-last", action="store_true")
    ap.add_argument("--configs", default="[{}]", help="JSON list of CONFIG overrides")
    ap.add_argument("--fwd-only", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "src"))
    from transmamba.ops.selective_scan import triton as S

    b, l, d, n = args.batch, args.seqlen, args.dim, args.dstate
    u, delta, A, B, C, D, z, bias = _inputs(b, d, l, n, args.channel_last)
    leaves = [u, delta, A, B, C, D, z, bias]
    for t in leaves:
        t.requires_grad_()
    dy = torch.randn_like(u)
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
    base = copy.deepcopy(S.CONFIG)
    ref = None
    for cand in json.loads(args.configs):
        S.CONFIG.clear()
        S.CONFIG.update(copy.deepcopy(base))
        for k, v in cand.items():
            S.CONFIG[k].update(v)
        row = {"config": cand, "b": b, "L": l, "d": d, "n": n, "channel_last": args.channel_last}
        try:
            t0 = time.time()
            y = S.selective_scan_triton(u, delta, A, B, C, **kw)
            du = torch.autograd.grad(y, u, dy)[0] if not args.fwd_only else None
            torch.cuda.synchronize()
            row["first_call_s"] = round(time.time() - t0, 2)
            if ref is None:
                ref = (y.detach(), du)
            row["rel_y_vs_first"] = rel(y, ref[0])
            if du is not None:
                row["rel_du_vs_first"] = rel(du, ref[1])
            with torch.no_grad():
                row["fwd_ms"] = bench_ms(lambda: S.selective_scan_triton(u, delta, A, B, C, **kw))
            if not args.fwd_only:
                row["fwdbwd_ms"] = bench_ms(
                    lambda: torch.autograd.grad(S.selective_scan_triton(u, delta, A, B, C, **kw), leaves, dy))
        except Exception as err:  # noqa: BLE001 - a config that fails is reported and skipped
            row["error"] = repr(err)[:300]
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
