"""Per-kernel CUDA times of one Triton selective-scan forward + backward (torch.profiler).

    python experiments/scan_profile.py --batch 4 --seqlen 4096 --dim 2048

Prints one line per kernel (microseconds per call, calls per step). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--channel-last", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "experiments"))
    from scan_tune import _inputs
    from torch.profiler import ProfilerActivity, profile

    from transmamba.ops.selective_scan.triton import selective_scan_triton

    b, l, d, n = args.batch, args.seqlen, args.dim, args.dstate
    u, delta, A, B, C, D, z, bias = _inputs(b, d, l, n, args.channel_last)
    leaves = [u, delta, A, B, C, D, z, bias]
    for t in leaves:
        t.requires_grad_()
    dy = torch.randn_like(u)

    def step():
        y = selective_scan_triton(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)
        torch.autograd.grad(y, leaves, dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    reps = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0:
            rows.append((t / reps, ev.count / reps, ev.key[:90]))
    rows.sort(reverse=True)
    print(f"b={b} L={l} d={d} n={n} channel_last={args.channel_last}: total {sum(r[0] for r in rows):.1f} us")
    for us, calls, key in rows:
        print(f"{us:10.1f} us  x{calls:.0f}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
