# ruff: noqa: B023  (closures are called inside the loop iteration that builds them)
"""SSD pipeline variants on the GPU: the first path (v1), the fused one (v2 = `ssd.NEW_PATH`), v2 with each
switch turned off, and mamba_ssm, at the benchmark shape (64 heads x 64, d_state 128, 1 group, chunk 256,
bf16); optionally a sweep of the fused state walks' launch settings.

    python experiments/ssd_variants.py --shapes 4x8192,2x8192x48x16 --out DIR [--tune] [--variants v1,v2]

A shape is BATCHxL (64 heads, 1 group) or BATCHxLxHEADSxGROUPS (headdim 64, d_state 128 always; 2x8192x48x16
is transmamba-400m's layer call).

Writes DIR/ssd-variants2.json/.csv (fwd ms, fwd+bwd ms, largest relative difference of y and of every
gradient against v1) and, with --tune, DIR/ssd-tune-fused.json/.csv. Timings: medians of CUDA events after
warm-up (triton.testing.do_bench), all in one process.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def bench_ms(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of fn over CUDA events (triton's do_bench), as in benchmarks/run.py."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def gpu_name() -> str:
    return torch.cuda.get_device_name()


def load_mamba_ssm():
    """mamba_ssm's `mamba_chunk_scan_combined` from .peers/ (None when absent)."""
    sys.path.insert(0, str(ROOT / ".peers"))
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as err:  # noqa: BLE001 - peers are optional
        print(f"mamba_ssm peer unavailable: {err!r}")
        return None
    return {"chunk_scan_combined": mamba_chunk_scan_combined}


def _ssd_inputs(b, l, h, p, g, n, dtype=torch.bfloat16):
    """The benchmark inputs of benchmarks/run.py's SSD cases (same distributions)."""
    dev = "cuda"
    x = torch.randn(b, l, h, p, device=dev, dtype=dtype)
    dt = torch.randn(b, l, h, device=dev, dtype=torch.float32) * 0.5 - 1.0
    A = -torch.rand(h, device=dev) - 0.5
    B = torch.randn(b, l, g, n, device=dev, dtype=dtype)
    C = torch.randn(b, l, g, n, device=dev, dtype=dtype)
    D = torch.randn(h, device=dev)
    dt_bias = torch.randn(h, device=dev) * 0.3
    return x, dt, A, B, C, D, dt_bias


def _variants(S) -> dict[str, dict[str, int]]:
    off = {k: 0 for k in S.NEW_PATH}
    out = {"v1": dict(off), "v2": dict(S.NEW_PATH, hsplit=1)}
    for k in S.NEW_PATH:
        out[f"v2-no-{k}"] = dict(S.NEW_PATH, hsplit=1, **{k: 0})
    for n in (2, 4, 8):  # each group's heads split over n programs in the dCB / dB-dC kernels (no fbc then)
        out[f"v2-hsplit{n}"] = dict(S.NEW_PATH, hsplit=n)
    for name in EXTRA:
        out[name] = dict(S.NEW_PATH, hsplit=1, **EXTRA_MISC.get(name, {}))
    out["v2-cb16-on"] = dict(S.NEW_PATH, hsplit=1, cb16=1)  # C·B stored in bf16
    # head-blocked kernels (ssd_kernels_wide.py): the chunk scan alone, and with the dx kernel (dA in dCB)
    for nh in (2, 4):
        out[f"v2-wide{nh}"] = dict(S.NEW_PATH, hsplit=1, wide=nh)
        out[f"v2-dA0-wide{nh}"] = dict(S.NEW_PATH, hsplit=1, dda_in_dx=0, wide=nh, wide_dx=nh)
        out[f"v2-dA0-wide{nh}-ot"] = dict(out[f"v2-dA0-wide{nh}"], onek_da=1, tridot=1)
    # the dA's diagonal-tile prefix sums as a dot (tridot), the dCB kernel's head loop pipelined (onek_da)
    out["v2-tri"] = dict(S.NEW_PATH, hsplit=1, tridot=1)
    out["v2-dA0-onek"] = dict(S.NEW_PATH, hsplit=1, dda_in_dx=0, onek_da=1)
    out["v2-dA0-tri"] = dict(S.NEW_PATH, hsplit=1, dda_in_dx=0, tridot=1)
    out["v2-dA0-ot"] = dict(S.NEW_PATH, hsplit=1, dda_in_dx=0, onek_da=1, tridot=1)
    # flat launch grids with a chunk's tiles consecutive (swz), alone and on top of the others
    for name in ("v2", "v2-no-dda_in_dx", "v2-dA0-wide2", "v2-dA0-wide2-ot", "v2-dA0-ot", "v2-tri"):
        out[name + "-swz"] = dict(out[name], swz=1)
    out["v2-dA0-swz"] = out["v2-no-dda_in_dx-swz"]
    out["v2-s2"] = dict(S.NEW_PATH, hsplit=1, dda_in_dx=2, swz=0)  # session 2's default (batches 2-5)
    for n in (2, 4):  # the dCB kernel's heads split over n programs (dB/dC kernel still fused)
        out[f"v2-dA0-split{n}"] = dict(out["v2-no-dda_in_dx"], dcb_split=n)
        out[f"v2-dA0-split{n}-swz"] = dict(out["v2-no-dda_in_dx"], dcb_split=n, swz=1)
    return out


# variants that also change launch settings: name -> CONFIG updates (on top of v2's switches)
EXTRA = {
    "v2-minprogs": {"fstate": {"min_progs": 264}, "bstate": {"min_progs": 264}},
    "v2-bp32": {"fstate": {"BP": 32}, "bstate": {"BP": 32}},
    "v2-bwalk-only": {"fstate": {"min_bh": 1 << 30}},  # fused walk in the backward only
    "v2-fwalk-only": {"bstate": {"min_bh": 1 << 30}},  # fused walk in the forward only
    "v2-dx-bk64": {"dx": {"BK": 64}},
    "v2-dx-w8": {"dx": {"warps": 8}},
    "v2-scan-64": {"scan": {"BM": 64, "BK": 64, "warps": 4}},
    "v2-bcs-bn128": {"bcs": {"BN": 128}},
    "v2-dcb-w8": {"dcb": {"warps": 8}},
    "v2-dA0-swz-cb128": {"cb": {"B": 128, "warps": 8}},  # C·B in 128-tiles (16 groups: 0.28 ms, batch 6)
}
EXTRA_MISC = {"v2-dA0-swz-cb128": dict(dda_in_dx=0, swz=1)}  # switches of EXTRA variants other than v2's


def _profile(fn, leaves, dy, reps: int = 3) -> list[dict]:
    """Per-kernel CUDA time of one fwd+bwd (torch.profiler, mean over reps)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            torch.autograd.grad(fn(), leaves, dy)
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0:
            rows.append({"kernel": ev.key[:60], "us": t / reps, "calls": ev.count / reps})
    return sorted(rows, key=lambda r: -r["us"])


def _write(rows, out: Path, name: str, meta) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def run_variants(shapes, names, out: Path, meta, prof: bool = False, ref64: bool = False) -> list[dict]:  # noqa: C901
    """Time each variant (fwd, fwd+bwd) per shape; differences against the first variant, or with ref64
    errors against the fp64 torch reference (`ssd_chunked`); with prof also a per-kernel profile."""
    from transmamba.ops.ssd import triton as S
    from transmamba.ops.ssd.chunked import ssd_chunked

    base = copy.deepcopy(S.CONFIG)
    variants = _variants(S)
    names = names or list(variants) + ["mamba_ssm"]
    peer = load_mamba_ssm() if "mamba_ssm" in names else None
    rows, prows = [], []
    for b, l, nh, ng in shapes:
        x, dt, A, B, C, D, dt_bias = _ssd_inputs(b, l, nh, 64, ng, 128)
        leaves = [x, dt, A, B, C, D, dt_bias]
        for t in leaves:
            t.requires_grad_()
        dy = torch.randn_like(x)
        kw = dict(chunk_size=256, D=D, dt_bias=dt_bias, dt_softplus=True)
        ref = None
        if ref64:
            r_leaves = [t.detach().double().requires_grad_() for t in leaves]
            yr = ssd_chunked(*r_leaves[:5], chunk_size=256, D=r_leaves[5], dt_bias=r_leaves[6],
                             dt_softplus=True)
            ref = [yr.detach()] + list(torch.autograd.grad(yr, r_leaves, dy.double()))
            del yr, r_leaves
        for name in names:
            S.CONFIG.clear()
            S.CONFIG.update(copy.deepcopy(base))
            for k, v in EXTRA.get(name, {}).items():
                S.CONFIG[k].update(v)
            if name == "mamba_ssm":
                if peer is None:
                    continue
                impl = peer["chunk_scan_combined"]
            else:
                S.CONFIG["misc"].update(variants[name])
                impl = S.ssd_triton

            def fn():
                return impl(x, dt, A, B, C, **kw)
            row = {"variant": name, "batch": b, "L": l, "heads": nh, "groups": ng}
            try:
                y = fn()
                gs = torch.autograd.grad(y, leaves, dy)
                outs = [y.detach().float()] + [g.float() for g in gs]
                if ref is None:
                    ref = outs
                for nm, a, r in zip(["y", "dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias"], outs, ref):
                    row[f"{'err' if ref64 else 'diff'}_{nm}"] = rel(a, r)
                del y, gs, outs
                row["fwd_ms"] = bench_ms(lambda: _nograd(fn))
                row["fwdbwd_ms"] = bench_ms(lambda: torch.autograd.grad(fn(), leaves, dy))
                if prof:
                    for pr in _profile(fn, leaves, dy):
                        prows.append({"variant": name, "batch": b, "L": l, "heads": nh, "groups": ng, **pr})
                        if pr["us"] >= 5:
                            print(f"  {name} {b}x{l} {pr['us']:8.1f} us x{pr['calls']:.0f} {pr['kernel']}")
                    _write(prows, out, "ssd-variants2-profile", meta)
            except Exception as err:  # noqa: BLE001 - record and keep going
                row["error"] = repr(err)[:300]
            print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}),
                  flush=True)
            rows.append(row)
            _write(rows, out, "ssd-variants2", meta)
        ref = None
        torch.cuda.empty_cache()
    S.CONFIG.clear()
    S.CONFIG.update(base)
    return rows


def _nograd(fn):
    with torch.no_grad():
        return fn()


TUNE = {  # most promising first: the sweep stops at its time budget
    "fstate": [dict(BP=bp, BN=bn, BK=bk, warps=w, stages=3) for bk in (64, 32) for bp, bn in
               ((64, 64), (32, 64), (64, 32), (64, 128), (32, 128), (32, 32)) for w in (4, 8)],
    "bstate": [dict(BP=bp, BN=bn, BK=bk, warps=w, stages=3) for bk in (64, 32) for bp, bn in
               ((64, 64), (32, 64), (64, 32), (64, 128), (32, 128), (32, 32)) for w in (4, 8)],
    "scan": [dict(BM=bm, BK=bk, warps=w, stages=s) for bm, bk, w in ((128, 32, 8), (64, 64, 4), (64, 32, 4),
             (128, 64, 8), (64, 64, 8), (128, 32, 4)) for s in (3, 2)],
    "dx": [dict(BJ=bj, BK=bk, warps=w, stages=s) for bj, bk, w in ((64, 32, 4), (64, 64, 4), (128, 64, 8),
           (64, 64, 8), (128, 32, 8)) for s in (3, 2)],
    "dcb": [dict(B=bb, warps=w, stages=s) for bb, w in ((64, 4), (64, 8), (32, 4), (128, 8)) for s in (2, 3)],
    "bcs": [dict(BT=bt, BN=bn, warps=w, stages=s) for bt, bn, w, s in ((64, 64, 4, 2), (64, 128, 8, 2),
            (64, 128, 4, 2), (128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 3), (64, 128, 8, 3))],
    "wscan": [dict(BM=bm, BK=bk, warps=w, stages=s) for bm, bk, w, s in ((64, 64, 8, 2), (64, 32, 8, 2),
              (128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 8, 3), (128, 64, 8, 2))],
    "wdx": [dict(BJ=bj, BK=bk, warps=w, stages=s) for bj, bk, w, s in ((64, 64, 8, 2), (64, 32, 8, 2),
            (64, 64, 8, 3), (64, 32, 4, 2), (128, 32, 8, 2))],
}
FWD_ONLY = ("fstate", "scan", "wscan")


def run_tune(shapes, out: Path, meta, budget_s: float, keys: list[str], misc: dict | None = None,  # noqa: C901
             tag: str = "") -> list[dict]:
    """Greedy per kernel (in `keys` order), v2 path (+ `misc` switches), first shape only: forward kernels
    (FWD_ONLY) by the forward's time, the others by fwd+bwd; each key gets budget_s / len(keys) seconds."""
    from transmamba.ops.ssd import triton as S

    b, l, nh, ng = shapes[0]
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(b, l, nh, 64, ng, 128)
    leaves = [x, dt, A, B, C, D, dt_bias]
    for t in leaves:
        t.requires_grad_()
    dy = torch.randn_like(x)
    kw = dict(chunk_size=256, D=D, dt_bias=dt_bias, dt_softplus=True)
    S.CONFIG["misc"].update(S.NEW_PATH, hsplit=1)
    S.CONFIG["misc"].update(misc or {})
    rows = []
    for key in keys:
        space = TUNE[key]
        t_end = time.time() + budget_s / len(keys)
        best = None
        for cand in space:
            if time.time() > t_end:
                break
            old = dict(S.CONFIG[key])
            S.CONFIG[key].update(cand)
            try:
                if key in FWD_ONLY:
                    ms = bench_ms(lambda: _nograd(lambda: S.ssd_triton(x, dt, A, B, C, **kw)),
                                  warmup=10, rep=40)
                else:
                    ms = bench_ms(lambda: torch.autograd.grad(S.ssd_triton(x, dt, A, B, C, **kw), leaves, dy),
                                  warmup=10, rep=40)
                row = {"kernel": key, **cand, "ms": ms, "misc": json.dumps(misc or {})}
            except Exception as err:  # noqa: BLE001 - a config that does not compile is skipped
                row = {"kernel": key, **cand, "error": repr(err)[:200], "misc": json.dumps(misc or {})}
            S.CONFIG[key] = old
            rows.append(row)
            if "ms" in row and (best is None or row["ms"] < best[1]):
                best = (cand, row["ms"])
        if best is not None:
            S.CONFIG[key].update(best[0])
        print(f"tune {key}: best {best}", flush=True)
        _write(rows, out, "ssd-tune-fused" + tag, meta)
    print("TUNED " + json.dumps({k: S.CONFIG[k] for k in keys}), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4x8192,1x32768", help="comma-separated BATCHxL")
    ap.add_argument("--variants", default="",
                    help="comma-separated (default: all + mamba_ssm; none: the sweep only)")
    ap.add_argument("--tune", action="store_true", help="also sweep the fused state walks' settings")
    ap.add_argument("--profile", action="store_true", help="per-kernel profile of each variant")
    ap.add_argument("--ref64", action="store_true", help="errors against the fp64 reference (small shapes)")
    ap.add_argument("--tune-budget-s", type=float, default=40.0)
    ap.add_argument("--tune-keys", default="fstate,bstate", help=f"kernels to sweep, of {','.join(TUNE)}")
    ap.add_argument("--tune-misc", default="", help='JSON misc switches for the sweep, e.g. {"dda_in_dx": 0}')
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    shapes = []
    for s in args.shapes.split(","):
        v = [int(t) for t in s.split("x")]
        shapes.append(tuple(v) if len(v) == 4 else (v[0], v[1], 64, 1))
    meta = {"gpu": gpu_name(), "torch": torch.__version__, "triton": triton.__version__,
            "command": "python experiments/ssd_variants.py " + " ".join(sys.argv[1:]),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    out = Path(args.out)
    if args.variants != "none":  # "none": only the sweep
        run_variants(shapes, [v for v in args.variants.split(",") if v], out, meta, args.profile, args.ref64)
    if args.tune:
        misc = json.loads(args.tune_misc) if args.tune_misc else None
        tag = "-" + "-".join(f"{k}{v}" for k, v in misc.items()) if misc else ""
        run_tune(shapes, out, meta, args.tune_budget_s, args.tune_keys.split(","), misc, tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
