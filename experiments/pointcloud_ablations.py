"""PoinTramba's ablations over seeds on the synthetic sets (the study behind docs/pointcloud.md).

    python experiments/pointcloud_ablations.py run --out runs/pc [--dataset synthetic-local]
        [--variants paper,importance,fps,random,mean,max,no-aux,mamba2,transmamba,attention] [--seeds 0,1,2]
        [--epochs 12] [--device auto] [--threads 2]
    python experiments/pointcloud_ablations.py report --out runs/pc      # -> <out>/ablations.md

run: trains every variant for every seed with the library's loop (the `pointcloud train` defaults unless
flags say otherwise) and appends one JSON line per run (variant, seed, test OA / mAcc at the last and best
epoch, seconds) to <out>/ablations.jsonl; each seed also changes the generated data. report: mean ± sample
standard deviation over seeds per (data, variant).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from transmamba.pointcloud.model import PoinTramba, PoinTrambaConfig, attention_baseline

# variant -> PoinTrambaConfig overrides ("attention" = attention_baseline of the preset)
VARIANTS: dict[str, dict] = {
    "paper": {},  # BIO order, importance pooling, aux losses, Mamba-1
    "importance": {"ordering": "importance"},
    "fps": {"ordering": "fps"},
    "random": {"ordering": "random"},
    "mean": {"pooling": "mean"},
    "max": {"pooling": "max"},
    "no-aux": {"aux_losses": False},
    "mamba2": {"mixer": "mamba2"},
    "transmamba": {"mixer": "transmamba"},
    "attention": {},
}


def variant_config(preset: str, variant: str, **over) -> PoinTrambaConfig:
    cfg = PoinTrambaConfig.from_preset(preset, **over)
    if variant == "attention":
        return attention_baseline(cfg)
    return replace(cfg, **VARIANTS[variant])


def cmd_run(args) -> None:
    from transmamba.pointcloud.data import load_pointcloud_data
    from transmamba.pointcloud.loop import TrainConfig, train_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = load_pointcloud_data(args.dataset, num_points=args.num_points, num_classes=args.num_classes,
                                    train_size=args.train_size, test_size=args.test_size, seed=seed)
        for variant in args.variants.split(","):
            torch.manual_seed(seed)
            cfg = variant_config(args.preset, variant, num_classes=data.num_classes,
                                 num_points=args.num_points)
            model = PoinTramba(cfg).to(device)
            tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed)
            t0 = time.time()
            h = train_classifier(model, data, tcfg, num_points=args.num_points, device=device, log=None)
            row = {"dataset": args.dataset, "preset": args.preset, "variant": variant, "seed": seed,
                   "oa": h["final"]["oa"], "macc": h["final"]["macc"], "best_oa": h["best"]["oa"],
                   "epochs": args.epochs, "parameters": model.num_parameters(), "device": str(device),
                   "seconds": round(time.time() - t0, 1)}
            print(json.dumps(row), flush=True)
            with open(out / "ablations.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


def _ms(xs: list[float]) -> str:
    return f"{xs[0]:.1f}" if len(xs) == 1 else f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def cmd_report(args) -> None:
    path = Path(args.out) / "ablations.jsonl"
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    lines = ["| data | variant | seeds | test OA % (last) | mAcc % (last) | best OA % | s/run |",
             "|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["dataset"], r["variant"]) for r in rows):
        rs = [r for r in rows if (r["dataset"], r["variant"]) == key]
        lines.append(f"| {key[0]} | {key[1]} | {len(rs)} | {_ms([r['oa'] for r in rs])} "
                     f"| {_ms([r['macc'] for r in rs])} | {_ms([r['best_oa'] for r in rs])} "
                     f"| {statistics.mean(r['seconds'] for r in rs):.0f} |")
    (Path(args.out) / "ablations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("run", help="train every variant for every seed")
    a.add_argument("--out", required=True)
    a.add_argument("--dataset", default="synthetic-local")
    a.add_argument("--preset", default="pointramba-tiny")
    a.add_argument("--variants", default=",".join(VARIANTS))
    a.add_argument("--seeds", default="0,1,2")
    a.add_argument("--epochs", type=int, default=12)
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--lr", type=float, default=2e-3)
    a.add_argument("--num-points", type=int, default=256)
    a.add_argument("--num-classes", type=int, default=8)
    a.add_argument("--train-size", type=int, default=480)
    a.add_argument("--test-size", type=int, default=240)
    a.add_argument("--device", default="auto")
    a.add_argument("--threads", type=int, default=None)
    r = sub.add_parser("report", help="mean ± standard deviation over seeds -> <out>/ablations.md")
    r.add_argument("--out", required=True)
    args = p.parse_args(argv)
    {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
