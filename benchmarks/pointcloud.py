"""PoinTramba benchmarks: throughput and memory against the all-attention model of the same size, and the
paper's ablations over seeds on the synthetic sets.

    python benchmarks/pointcloud.py throughput --out runs/pointcloud-bench [--preset pointramba]
        [--groups-gpu 64,128,256,512,1024] [--groups-cpu 32,64,128] [--batch 32] [--cpu-batch 4]
    python benchmarks/pointcloud.py ablate --out runs/pointcloud-bench [--dataset synthetic-local]
        [--variants paper,importance,fps,random,mean,max,no-aux,mamba2,transmamba,attention] [--seeds 0,1,2]
        [--epochs 12] [--device auto] [--threads 2]
    python benchmarks/pointcloud.py report --out runs/pointcloud-bench      # -> <out>/report.md

throughput: for each device (CPU, and CUDA when present, in one run) and each number of groups G (clouds of
4·G points, K 16, as the paper's 1024 points / 256 groups), PoinTramba (BIO: 2G tokens through the Mamba
blocks) and ``attention_baseline`` (same width, as many bidirectional attention blocks as make the same
parameter count, G tokens) are timed: inference (eval mode, no grad) clouds/s and one training step
(forward, loss, backward, AdamW step) in ms; medians over ``--iters`` after ``--warmup`` calls, CUDA timed
with synchronisation. Memory: CUDA peak allocated bytes of a training step (``max_memory_allocated``); on
the CPU every case runs in its own child process and reports its peak RSS (``ru_maxrss``). Rows go to
<out>/throughput.jsonl.

ablate: trains every variant for every seed with the library's loop (the `pointcloud train` defaults unless
flags say otherwise) and appends one JSON line per run (variant, seed, test OA / mAcc at the last and best
epoch, seconds) to <out>/ablations.jsonl. report: mean ± sample standard deviation over seeds per variant,
and the throughput table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from transmamba.pointcloud.model import PoinTramba, PoinTrambaConfig, attention_baseline  # noqa: E402

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


def _config(preset: str, variant: str, **over) -> PoinTrambaConfig:
    cfg = PoinTrambaConfig.from_preset(preset, **over)
    if variant == "attention":
        return attention_baseline(cfg)
    return replace(cfg, **VARIANTS[variant])


# ------------------------------------------------------------------------------------------ throughput


def _time(fn, iters: int, warmup: int, cuda: bool) -> float:
    """Median seconds of fn() over iters calls after warmup calls."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run_case(case: dict) -> dict:
    """Time one (device, model, G) case; returns the row."""
    device = torch.device(case["device"])
    cuda = device.type == "cuda"
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    G = case["groups"]
    cfg = _config(case["preset"], case["model"], num_groups=G, num_points=4 * G)
    torch.manual_seed(0)
    model = PoinTramba(cfg).to(device)
    B = case["batch"]
    x = torch.randn(B, 4 * G, 3, device=device)
    y = torch.randint(0, cfg.num_classes, (B,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def infer():
        with torch.no_grad():
            model(x)

    def step():
        out = model(x)
        loss, _ = model.loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.eval()
    t_inf = _time(infer, case["iters"], case["warmup"], cuda)
    model.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_step = _time(step, case["iters"], case["warmup"], cuda)
    row = {
        **case,
        "parameters": model.num_parameters(),
        "depth": cfg.depth,
        "tokens": cfg.seq_len,
        "infer_clouds_per_s": B / t_inf,
        "train_step_ms": 1e3 * t_step,
    }
    if cuda:
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        row["gpu"] = torch.cuda.get_device_name()
    else:
        row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def cmd_throughput(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "throughput.jsonl"
    devices = [("cpu", [int(g) for g in args.groups_cpu.split(",")], args.cpu_batch)]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(("cuda", [int(g) for g in args.groups_gpu.split(",")], args.batch))
    for dev, groups, batch in devices:
        for G in groups:
            for model in ("paper", "attention"):
                case = {
                    "device": dev,
                    "preset": args.preset,
                    "model": model,
                    "groups": G,
                    "batch": batch,
                    "iters": args.iters if dev == "cuda" else args.cpu_iters,
                    "warmup": 2,
                    "threads": args.threads,
                }
                try:
                    if dev == "cpu":  # own process: peak RSS belongs to this case alone
                        res = subprocess.run(
                            [sys.executable, __file__, "_case", json.dumps(case)],
                            capture_output=True,
                            text=True,
                            timeout=args.case_timeout,
                        )
                        if res.returncode != 0:
                            raise RuntimeError(
                                res.stderr.strip().splitlines()[-1] if res.stderr else "failed"
                            )
                        row = json.loads(res.stdout.strip().splitlines()[-1])
                    else:
                        row = run_case(case)
                        torch.cuda.empty_cache()
                except (RuntimeError, subprocess.TimeoutExpired, torch.cuda.OutOfMemoryError) as err:
                    row = {**case, "error": str(err)[:200]}
                print(json.dumps(row), flush=True)
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------------------------- ablate


def cmd_ablate(args) -> None:
    from transmamba.pointcloud.data import load_pointcloud_data
    from transmamba.pointcloud.loop import TrainConfig, train_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ablations.jsonl"
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = load_pointcloud_data(
            args.dataset,
            num_points=args.num_points,
            num_classes=args.num_classes,
            train_size=args.train_size,
            test_size=args.test_size,
            seed=seed,
        )
        for variant in args.variants.split(","):
            torch.manual_seed(seed)
            cfg = _config(args.preset, variant, num_classes=data.num_classes, num_points=args.num_points)
            model = PoinTramba(cfg).to(device)
            tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed)
            t0 = time.time()
            h = train_classifier(model, data, tcfg, num_points=args.num_points, device=device, log=None)
            row = {
                "dataset": args.dataset,
                "preset": args.preset,
                "variant": variant,
                "seed": seed,
                "oa": h["final"]["oa"],
                "macc": h["final"]["macc"],
                "best_oa": h["best"]["oa"],
                "epochs": args.epochs,
                "parameters": model.num_parameters(),
                "device": str(device),
                "seconds": round(time.time() - t0, 1),
            }
            print(json.dumps(row), flush=True)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------------------------- report


def _read(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def cmd_report(args) -> None:
    out = Path(args.out)
    lines = []
    abl = _read(out / "ablations.jsonl")
    if abl:
        lines += [
            "## Ablations",
            "",
            "| data | variant | seeds | test OA % (last) | mAcc % (last) | best OA % | s/run |",
            "|---|---|---|---|---|---|---|",
        ]
        keys = []
        for r in abl:
            k = (r["dataset"], r["variant"])
            if k not in keys:
                keys.append(k)
        for k in keys:
            rs = [r for r in abl if (r["dataset"], r["variant"]) == k]
            lines.append(
                f"| {k[0]} | {k[1]} | {len(rs)} | {_ms([r['oa'] for r in rs])} "
                f"| {_ms([r['macc'] for r in rs])} | {_ms([r['best_oa'] for r in rs])} "
                f"| {statistics.mean(r['seconds'] for r in rs):.0f} |"
            )
        lines.append("")
    thr = [r for r in _read(out / "throughput.jsonl") if "error" not in r]
    if thr:
        lines += [
            "## Throughput and memory",
            "",
            "| device | G | model | params (M) | tokens | infer clouds/s | train step ms | peak MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in thr:
            mem = r.get("peak_mem_mib", r.get("peak_rss_mib"))
            lines.append(
                f"| {r.get('gpu', 'cpu')} (b {r['batch']}) | {r['groups']} | "
                f"{'PoinTramba' if r['model'] == 'paper' else 'all-attention'} ({r['depth']} blocks) | "
                f"{r['parameters'] / 1e6:.2f} | {r['tokens']} | {r['infer_clouds_per_s']:.1f} | "
                f"{r['train_step_ms']:.1f} | {mem:.0f} |"
            )
    for r in _read(out / "throughput.jsonl"):
        if "error" in r:
            lines.append(f"- {r['device']} G {r['groups']} {r['model']}: {r['error']}")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--out", required=True)
    t.add_argument("--preset", default="pointramba")
    t.add_argument("--groups-gpu", default="64,128,256,512,1024")
    t.add_argument("--groups-cpu", default="32,64,128")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--cpu-batch", type=int, default=4)
    t.add_argument("--iters", type=int, default=10)
    t.add_argument("--cpu-iters", type=int, default=3)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--cpu-only", action="store_true")
    t.add_argument("--case-timeout", type=float, default=300)
    a = sub.add_parser("ablate")
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
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "_case":
        print(json.dumps(run_case(json.loads(sys.argv[2]))))
        return
    args = p.parse_args(argv)
    {"throughput": cmd_throughput, "ablate": cmd_ablate, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
