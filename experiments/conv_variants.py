# ruff: noqa: B023, E501  (closures are timed inside their loop iteration; long launch lines)
"""Causal conv1d kernels at the model's shape (transmamba-400m: 7168 xBC channels inside in_proj's 10288-wide
bf16 output, 2 x 8192 tokens, width 4, SiLU): per-launch time (median of triton's do_bench), the compiled
kernels' registers / spills / shared memory, and the new backward variants' agreement with the two-launch one.

    python experiments/conv_variants.py [--out DIR]     (CUDA; writes conv-variants.json)
    TRITON_INTERPRET=1 python experiments/conv_variants.py --smoke   (tiny CPU run of the same code, no timing)
"""

from __future__ import annotations

import argparse
import json
import os

import torch


def _info(k) -> dict:
    """Registers, spills and shared memory of a compiled Triton kernel (the object a launch returns)."""
    out = {}
    for a in ("n_regs", "n_spills"):
        out[a] = getattr(k, a, None)
    md = getattr(k, "metadata", None)
    out["shared"] = getattr(md, "shared", None) if md is not None else None
    out["num_warps"] = getattr(md, "num_warps", None) if md is not None else None
    return out


def main() -> None:
    import triton
    from triton.testing import do_bench

    from transmamba.ops.triton import conv as TC
    from transmamba.ops.triton import conv_bwd as CB
    from transmamba.ops.triton import conv_fwd as CF

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--T", type=int, default=8192)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (interpreter), no timing")
    args = ap.parse_args()
    dev = "cpu" if args.smoke else "cuda"
    rows = []

    def emit(r):
        rows.append(r)
        print(json.dumps(r), flush=True)
        with open(os.path.join(args.out, "conv-variants.json"), "w") as f:
            json.dump(rows, f, indent=1)

    b, T, d, W = (1, 40, 64, 4) if args.smoke else (args.batch, args.T, 7168, 4)
    full, off = (96, 24) if args.smoke else (10288, 3072)
    gb = b * T * d * 2 / 1e9
    torch.manual_seed(0)
    buf = torch.randn(b, T, full, device=dev, dtype=torch.float32 if args.smoke else torch.bfloat16)
    w = torch.randn(d, W, device=dev) * 0.5
    bias = torch.randn(d, device=dev)
    layouts = {
        "gapped": buf[..., off:off + d].transpose(1, 2),
        "dense_cl": buf[..., :d].contiguous().transpose(1, 2),  # (b, T, d) contiguous, channels-last view
    }
    dy = torch.randn(b, T, d, device=dev, dtype=buf.dtype).transpose(1, 2)
    ms = (lambda fn: 0.0) if args.smoke else (lambda fn: float(do_bench(fn, warmup=10, rep=50, return_mode="median")))  # noqa: E731
    if args.smoke:
        torch.cuda.synchronize = lambda: None
    for lname, x in layouts.items():
        seqlen = T
        y = TC._empty_like_layout(x)
        grid = (b, triton.cdiv(d, TC._BD), triton.cdiv(T, TC._BL))

        def fwd():
            return TC._fwd_kernel[grid](x, w, bias, x, y, seqlen, d, *x.stride(), *y.stride(), 0, 0, WIDTH=W,
                                        HAS_BIAS=True, HAS_SEQ=False, SILU=True, BD=TC._BD, BL=TC._BL, num_warps=4)
        k = fwd()
        emit({"layout": lname, "kernel": "fwd", "ms": ms(fwd), "floor_ms": 2 * gb / 3.0, **_info(k)})
        for cfg in [dict(BD=256, CH=128, warps=4), dict(BD=128, CH=64, warps=4), dict(BD=512, CH=128, warps=4),
                    dict(BD=128, CH=32, warps=2)][: 4 if lname == "gapped" else 1]:
            CF.WALK4.update(cfg)
            y2 = TC._empty_like_layout(x)
            try:
                k = CF.conv1d_fwd_walk4(x, w, bias, True, y2)
                t = ms(lambda: CF.conv1d_fwd_walk4(x, w, bias, True, y2))
                err = float((y2.float() - y.float()).norm() / y.float().norm())
                emit({"layout": lname, "kernel": "fwd_walk4", "cfg": cfg, "ms": t, "rel_err": err, **_info(k)})
            except Exception as e:  # noqa: BLE001
                emit({"layout": lname, "kernel": "fwd_walk4", "cfg": cfg, "error": repr(e)[:400]})
        # the two-launch backward in the tree (g, then dx)
        dx = TC._empty_like_layout(x)
        dw = torch.zeros(d, W, device=dev)
        db = torch.zeros(d, device=dev)
        g = torch.empty(b, T, d, device=dev, dtype=torch.float32)
        n_blocks = triton.cdiv(T, TC._BL)
        split = max(1, min(n_blocks, triton.cdiv(TC._PROGRAMS, b * triton.cdiv(d, TC._BD))))
        per = triton.cdiv(n_blocks, split)
        g_grid = (b, triton.cdiv(d, TC._BD), triton.cdiv(n_blocks, per))

        def bwd_g():
            return TC._bwd_g_kernel[g_grid](x, w, bias, x, dy, g, dw, db, T, d, *x.stride(), *dy.stride(), 0, 0, per,
                                            WIDTH=W, WP=4, HAS_BIAS=True, HAS_SEQ=False, SILU=True, BD=TC._BD,
                                            BL=TC._BL, num_warps=4)

        def bwd_dx():
            return TC._bwd_dx_kernel[(b, triton.cdiv(d, TC._BD), n_blocks)](
                g, w, x, dx, T, d, *dx.stride(), 0, 0, WIDTH=W, HAS_SEQ=False, BD=TC._BD, BL=TC._BL, num_warps=4)
        k = bwd_g()
        emit({"layout": lname, "kernel": "bwd_g (tree)", "programs": g_grid, "ms": ms(bwd_g), **_info(k)})
        k = bwd_dx()
        emit({"layout": lname, "kernel": "bwd_dx (tree)", "ms": ms(bwd_dx), **_info(k)})
        dw.zero_()
        db.zero_()
        bwd_g()
        bwd_dx()
        ref = (dx.float(), dw.clone(), db.clone())
        # one-launch variants
        for variant, cfgs in (
            ("walk4", [dict(BD=256, CH=128, warps=4), dict(BD=128, CH=64, warps=4), dict(BD=256, CH=64, warps=2),
                       dict(BD=512, CH=128, warps=4), dict(BD=128, CH=32, warps=1)]),
            ("walk", [dict(BD=256, CH=256, warps=4), dict(BD=128, CH=256, warps=4), dict(BD=512, CH=256, warps=4),
                      dict(BD=256, CH=64, warps=4), dict(BD=128, CH=128, warps=1)]),
            ("tile", [dict(BD=64, BL=16, warps=4, per=8), dict(BD=64, BL=32, warps=8, per=8),
                      dict(BD=128, BL=16, warps=4, per=8), dict(BD=64, BL=16, warps=4, per=32)]),
        ):
            for cfg in cfgs if lname == "gapped" else cfgs[:1]:
                {"tile": CB.TILE, "walk": CB.WALK, "walk4": CB.WALK4}[variant].update(cfg)
                dx2 = TC._empty_like_layout(x)
                try:
                    dw2, db2 = CB.conv1d_bwd_fused(x, w, bias, None, True, dy, dx2, variant)
                    torch.cuda.synchronize()
                    t = ms(lambda: CB.conv1d_bwd_fused(x, w, bias, None, True, dy, dx2, variant))
                    errs = [float((a.float() - r).norm() / r.norm()) for a, r in zip((dx2, dw2, db2), ref)]
                    info = _info(CB.LAST_LAUNCH.get(variant))
                    emit({"layout": lname, "kernel": f"bwd_{variant}", "cfg": cfg, "ms": t, "rel_err_dx_dw_db": errs,
                          "bwd_floor_ms": 3 * gb / 3.0, **info})
                except Exception as e:  # noqa: BLE001
                    emit({"layout": lname, "kernel": f"bwd_{variant}", "cfg": cfg, "error": repr(e)[:400]})


if __name__ == "__main__":
    main()
