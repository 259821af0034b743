"""Sample quality at equal parameters over seeds: Dimba vs attention-only (DiT/PixArt) vs Mamba-only (DiS).

    python experiments/diffusion_quality.py --device cuda --seeds 0,1,2 --steps 1200 --out DIR
    python experiments/diffusion_quality.py --device cpu --seeds 0 --steps 50      # a quick check

Every (arch, seed) trains the CPU recipe of ``transmamba diffuse train`` (digits 8×8, the ``--preset``
network; the baselines take the depth that matches its parameter count) for ``--steps`` steps, then scores
``--per-class`` guided samples per class with the classifier of ``transmamba.diffusion.evaluate`` (class
accuracy, Fréchet distance on its features). Runs go in parallel worker processes (``--jobs``), one thread
each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def run_one(
    arch: str, seed: int, steps: int, device: str, preset: str, per_class: int, mixer: str, lr: float | None
) -> dict:
    import torch

    torch.set_num_threads(1)
    from transmamba.diffusion.data import load_image_data
    from transmamba.diffusion.loop import TrainConfig, evaluate_model, train_diffusion
    from transmamba.diffusion.model import Dimba, equal_params_config, preset_config

    data = load_image_data("digits", image_size=preset_config(preset).image_size)
    cfg = preset_config(preset, mixer=mixer)
    if arch != "dimba":
        cfg = equal_params_config(cfg, arch)
    torch.manual_seed(seed)
    model = Dimba(cfg).to(device)
    data.x = data.x.to(device)
    tc = TrainConfig(steps=steps, seed=seed, sample_every=0, checkpoint_every=0, **({"lr": lr} if lr else {}))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as run:
        ema, _ = train_diffusion(model, data, tc, run, log=None)
    seconds = time.time() - t0
    data.x = data.x.cpu()
    res = evaluate_model(
        ema,
        data,
        per_class=per_class,
        steps=tc.sample_steps,
        cfg_scale=tc.cfg_scale,
        seed=seed,
        beta_schedule=tc.beta_schedule,
    )
    return {
        "arch": arch,
        "seed": seed,
        "depth": cfg.depth,
        "params": model.num_parameters(),
        "train_seconds": round(seconds, 1),
        **res,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--archs", default="dimba,attention,mamba")
    p.add_argument("--preset", default="dimba-tiny")
    p.add_argument("--mixer", default="mamba1")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: TrainConfig's, the CPU recipe)")
    p.add_argument("--jobs", type=int, default=9)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    archs = args.archs.split(",")
    jobs = [(a, s) for a in archs for s in seeds]
    rows = []
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=min(args.jobs, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
        futs = [
            ex.submit(
                run_one, a, s, args.steps, args.device, args.preset, args.per_class, args.mixer, args.lr
            )
            for a, s in jobs
        ]
        for (a, s), f in zip(jobs, futs, strict=True):
            try:
                r = f.result()
            except Exception as err:  # one failing run must not lose the others
                print(json.dumps({"arch": a, "seed": s, "error": str(err)[:300]}), flush=True)
                continue
            rows.append(r)
            print(json.dumps(r), flush=True)
    lines = [
        "| arch | depth | params (M) | seeds | class accuracy | Fréchet distance | train s (each) |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in archs:
        rs = [r for r in rows if r["arch"] == a]
        if not rs:
            lines.append(f"| {a} | | | 0 | failed | | |")
            continue
        acc = [r["class_accuracy"] for r in rs]
        fd = [r["frechet_distance"] for r in rs]

        def fmt(v: list[float], nd: int) -> str:
            return (
                f"{statistics.mean(v):.{nd}f} ± {statistics.stdev(v):.{nd}f}"
                if len(v) > 1
                else f"{v[0]:.{nd}f}"
            )

        lines.append(
            f"| {a} | {rs[0]['depth']} | {rs[0]['params'] / 1e6:.2f} | {len(rs)} | {fmt(acc, 3)} | "
            f"{fmt(fd, 1)} | {statistics.mean(r['train_seconds'] for r in rs):.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "quality.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "quality.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
