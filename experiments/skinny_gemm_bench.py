"""Skinny GEMM sweep: y = x Wᵀ with M = 1 / 16 / 64 rows at the decode step's shapes, cuBLAS vs Triton.

    python experiments/skinny_gemm_bench.py OUT.json [--rows 1,16,64] [--sweep [--sweep-only]] \
        [--deadline-s S]

For each weight shape (N, K) of the 400M models' decode step (bf16) and each M: torch's F.linear (cuBLAS)
and `ops/triton/skinny_gemm.py` with its default configuration (and, with --sweep, a grid of block sizes
and split-K factors). Timing: enough copies of W that they do not fit in L2 (>= 256 MB) are multiplied in
turn inside one CUDA graph (so launch gaps are what they are in the decode step's graph), replayed a few
times; us per call = graph time / calls. GB/s counts W + x + y bytes; frac = that / the measured copy
bandwidth (read + write of a 1 GiB copy, also inside a graph). Each result is checked against an fp32
product of the same bf16 inputs (max relative error). Rows are appended to OUT.json as they come.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {  # name: (N, K)
    "in_proj": (10288, 1536), "out_proj": (1536, 3072), "mlp_up": (4096, 1536), "mlp_down": (1536, 4096),
    "lm_head": (151936, 1536), "tf_qkvo": (1536, 1536), "tf_up": (7680, 1536), "tf_down": (1536, 7680),
}
SWEEP = [  # (BN, BK, num_warps, num_stages)
    (32, 128, 4, 4), (64, 128, 4, 4), (64, 256, 4, 3), (128, 128, 4, 4), (64, 64, 4, 6), (128, 256, 8, 3),
    (32, 256, 4, 4), (64, 128, 8, 4), (16, 256, 4, 4),
]
SPLITS = (1, 2, 4, 8, 16)


def graph_us(fn_list, reps: int = 5) -> float:
    """us per call of the callables in fn_list, captured once in a graph and replayed `reps` times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for fn in fn_list[:2]:
            fn()  # warm-up / compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for fn in fn_list:
            fn()
    g.replay()
    torch.cuda.synchronize()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(reps):
        g.replay()
    t1.record()
    torch.cuda.synchronize()
    return t0.elapsed_time(t1) * 1e3 / (reps * len(fn_list))


def copy_GBps() -> float:
    n = 1 << 30
    src = torch.empty(n // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    us = graph_us([lambda: dst.copy_(src)] * 4)
    return 2 * n / us / 1e3


def _recorder(rows: list, base: dict, nbytes: int, bw: float, ref: torch.Tensor):
    """rec(method, us, y, **extra): appends and prints one result row (GB/s, fraction of copy bandwidth,
    max relative error of y against ref)."""

    def rec(method: str, us: float, y: torch.Tensor | None = None, **extra) -> None:
        gbps = nbytes / us / 1e3
        row = dict(base, method=method, us=round(us, 2), GBps=round(gbps, 1),
                   frac_of_copy_bw=round(gbps / bw, 3))
        if y is not None:
            row["max_rel_err"] = float((y.float() - ref).abs().max() / ref.abs().max())
        row.update(extra)
        rows.append(row)
        print(json.dumps(row), flush=True)

    return rec


def main(argv: list[str]) -> int:
    from transmamba.ops.triton.skinny_gemm import skinny_config, skinny_linear_triton

    out_path = argv[0]
    rows_m = [int(v) for v in (argv[argv.index("--rows") + 1] if "--rows" in argv else "1,16,64").split(",")]
    deadline = time.time() + (float(argv[argv.index("--deadline-s") + 1]) if "--deadline-s" in argv else 1e9)
    sweep = "--sweep" in argv
    bw = copy_GBps()
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_GBps": bw,
            "command": "python experiments/skinny_gemm_bench.py OUT.json " + " ".join(argv[1:])}
    rows: list[dict] = []

    def dump():
        with open(out_path, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)

    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    torch.manual_seed(0)
    phases = ("sweep",) if "--sweep-only" in argv else ("base", "sweep") if sweep else ("base",)
    for phase in phases:  # cuBLAS + default everywhere first
        for name, (N, K) in SHAPES.items():
            copies = max(2, -(-256 * 2**20 // (N * K * 2)))
            ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.05 for _ in range(copies)]
            for M in rows_m:
                if time.time() > deadline:
                    meta["stopped"] = f"deadline in phase {phase}"
                    dump()
                    return 0
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                ref = x.float() @ ws[0].float().T
                base = {"shape": name, "N": N, "K": K, "M": M}
                rec = _recorder(rows, base, N * K * 2 + M * (K + N) * 2, bw, ref)
                if phase == "base":
                    rec("torch", graph_us([lambda w=w, x=x: F.linear(x, w) for w in ws]), F.linear(x, ws[0]))
                    cfg = skinny_config(M, N, K, n_sm)
                    rec("triton_default", graph_us([lambda w=w, x=x: skinny_linear_triton(x, w) for w in ws]),
                        skinny_linear_triton(x, ws[0]), config=cfg)
                    continue
                for BN, BK, nw, ns in SWEEP:
                    for split in SPLITS:
                        if K // split < BK or time.time() > deadline:
                            continue
                        c = {"BN": BN, "BK": BK, "split": split, "num_warps": nw, "num_stages": ns}
                        try:
                            fns = [lambda w=w, x=x, c=c: skinny_linear_triton(x, w, config=c) for w in ws]
                            us = graph_us(fns)
                            rec("triton_sweep", us, skinny_linear_triton(x, ws[0], config=c), config=c)
                        except Exception as err:  # noqa: BLE001 - e.g. out of shared memory
                            rows.append(dict(base, config=c, error=repr(err)[:200]))
                dump()
            del ws
            torch.cuda.empty_cache()
    dump()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
