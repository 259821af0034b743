"""Per-kernel device time of one static decode step (what a CUDA graph replays), for one model / context /
batch: `python experiments/decode_profile.py transmamba-400m 32768 16`. Prints the kernels of one step
(count, total device µs) and the step's graph time, so launch gaps = graph time - kernel time."""

from __future__ import annotations

import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from benchmarks.cases.models import EXTRA, decode_models, fill_cache  # noqa: E402
from benchmarks.common import build_lm  # noqa: E402


def main(label: str, ctx: int, b: int, steps: int = 5) -> None:
    from torch.profiler import ProfilerActivity, profile

    from transmamba.inference.static_decode import StaticDecoder

    preset, over = next((p, o) for lab, p, o in decode_models() if lab == label)
    model = build_lm(preset, over, ctx + EXTRA)
    cache = model.init_cache(b, ctx + EXTRA)
    fill_cache(model, cache, ctx)
    ids = torch.randint(0, 1000, (b,), device="cuda")
    with torch.no_grad():
        dec = StaticDecoder(model, cache)
        for _ in range(3):
            dec.step(ids)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                dec.step(ids)
            torch.cuda.synchronize()
        g = StaticDecoder(model, cache, cuda_graph=True)
        for _ in range(3):
            g.step(ids)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(50):
            g.step(ids)
        torch.cuda.synchronize()
        graph_us = (time.perf_counter() - t0) / 50 * 1e6
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0:
            rows.append((t / steps, ev.count / steps, ev.key[:90]))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    count = sum(r[1] for r in rows)
    print(f"{label} ctx={ctx} b={b}: {count:.0f} kernels/step, kernel time {total:.0f} us/step, "
          f"graph step {graph_us:.0f} us (gaps {graph_us - total:.0f} us)")
    for t, c, k in rows[:25]:
        print(f"  {t:8.1f} us  x{c:4.0f}  {k}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
