"""CPU timings of the SSD implementations: chunked PyTorch vs the token-by-token recurrence.

    python experiments/ssd_cpu.py [--seqlens 512 2048] [--repeats 3] [--chunk-sizes 64 256] [--threads N]

Prints one markdown table (median wall time over `--repeats` runs after one warm-up, forward and
forward+backward) and writes nothing. Shapes: b=1, h=8 heads, p=32 headdim, g=1 group, n=32 state,
fp32, with D, dt_bias and dt_softplus as in a Mamba-2 layer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from transmamba.ops.ssd import ssd_chunked, ssd_naive

SHAPE = dict(b=1, h=8, p=32, g=1, n=32)


def make_inputs(l: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    b, h, p, g, n = (SHAPE[k] for k in "bhpgn")
    return dict(
        x=torch.randn(b, l, h, p, generator=gen),
        dt=torch.randn(b, l, h, generator=gen),
        A=-torch.rand(h, generator=gen) * 4 - 0.5,
        B=torch.randn(b, l, g, n, generator=gen),
        C=torch.randn(b, l, g, n, generator=gen),
        D=torch.randn(h, generator=gen),
        dt_bias=torch.randn(h, generator=gen) * 0.5,
    )


def time_once(fn, inp: dict, backward: bool, **kw) -> float:
    leaves = {k: v.clone().requires_grad_(backward) for k, v in inp.items()}
    t0 = time.perf_counter()
    if backward:
        fn(**leaves, dt_softplus=True, **kw).sum().backward()
    else:
        with torch.no_grad():
            fn(**leaves, dt_softplus=True, **kw)
    return time.perf_counter() - t0


def median_time(fn, inp: dict, backward: bool, repeats: int, **kw) -> float:
    time_once(fn, inp, backward, **kw)  # warm-up
    return statistics.median(time_once(fn, inp, backward, **kw) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqlens", type=int, nargs="+", default=[512, 2048], help="sequence lengths to time")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median reported)")
    ap.add_argument("--chunk-sizes", type=int, nargs="+", default=[64, 256], help="chunk lengths to time")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, shapes {SHAPE}, fp32, "
          f"median of {args.repeats} after a warm-up")
    print()
    heads = "".join(f" chunked Q={q} (ms) | speed-up |" for q in args.chunk_sizes)
    print("| seqlen | pass | naive (ms) |" + heads)
    print("|---:|---|---:|" + "---:|---:|" * len(args.chunk_sizes))
    for l in args.seqlens:
        inp = make_inputs(l)
        for backward in (False, True):
            t_naive = median_time(ssd_naive, inp, backward, args.repeats)
            row = f"| {l} | {'fwd+bwd' if backward else 'fwd'} | {t_naive * 1e3:.1f} |"
            for q in args.chunk_sizes:
                t = median_time(ssd_chunked, inp, backward, args.repeats, chunk_size=q)
                row += f" {t * 1e3:.1f} | {t_naive / t:.1f}x |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
