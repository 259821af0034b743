"""Mambaformer vs. its comparison models on LTSF benchmarks: the script behind docs/forecasting.md.

    # run a grid (appends one JSON line per finished run; re-running skips finished runs)
    python experiments/forecasting.py run --datasets etth1,exchange --horizons 96,192 --seeds 0,1 \
        --models mambaformer,attention-mamba,mamba,transformer --d-model 32 --out runs/forecasting.jsonl
    # tables + plot from the results
    python experiments/forecasting.py report --results runs/forecasting.jsonl \
        --md docs/forecasting_results.md \
        --png docs/forecasting_mse.png

Data files are looked up in $TRANSMAMBA_SHARED_DATA or ../shared/data next to the repository (never copied).
Every run: train split for training (optionally a random subset of windows per epoch), early stopping on
(the first N windows of) val, MSE/MAE on the full test split, standardised values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATASETS = {  # name -> path under the shared data folder, paper's lr / batch
    "etth1": ("ETT-small/ETTh1.csv", 1e-4, 128),
    "exchange": ("exchange_rate/exchange_rate.csv", 1e-3, 64),
}


def shared_data_dir() -> Path:
    env = os.environ.get("TRANSMAMBA_SHARED_DATA")
    return Path(env) if env else (REPO / ".." / "shared" / "data").resolve()


def data_path(name: str) -> Path:
    if name == "synthetic":
        return None
    rel = DATASETS[name][0]
    for cand in (shared_data_dir() / rel, shared_data_dir() / Path(rel).name):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{name}: {rel} not found under {shared_data_dir()} (set TRANSMAMBA_SHARED_DATA)")


def mixer_of(model_name: str, mixer: str) -> str:
    """The Transformer baseline has no Mamba sub-layer: its runs are shared by every mixer's table."""
    return "-" if model_name == "transformer" else mixer


def _key(r: dict) -> tuple:
    return (r["dataset"], r["model"], r["mixer"], r["horizon"], r["seed"])


def run_one(args, dataset: str, model_name: str, horizon: int, seed: int) -> dict:
    from transmamba.forecasting.data import load_forecast_data
    from transmamba.forecasting.loop import TrainConfig, evaluate, train_forecaster
    from transmamba.forecasting.model import Mambaformer, MambaformerConfig
    from transmamba.forecasting.plot import plot_forecasts

    data = load_forecast_data(data_path(dataset), seq_len=args.seq_len, pred_len=horizon, seed=seed)
    torch.manual_seed(seed)
    cfg = MambaformerConfig(
        n_vars=data.n_vars,
        n_time_features=data.n_time_features,
        arch=model_name,
        mixer=args.mixer,
        d_model=args.d_model,
        n_heads=args.n_heads,
        d_state=args.d_state,
        dropout=args.dropout,
        time_features=not args.no_time_features,
    )
    model = Mambaformer(cfg)
    lr = args.lr if args.lr is not None else DATASETS.get(dataset, (None, 1e-3))[1]
    tcfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=lr,
        patience=args.patience,
        max_train_windows=args.max_train_windows,
        max_eval_windows=args.max_eval_windows,
        seed=seed,
    )
    t0 = time.time()
    hist = train_forecaster(model, data, tcfg, log=lambda s: print(f"  {s}", flush=True))
    test = evaluate(model, data.test, batch_size=64)
    if seed == 0 and args.plots:
        tag = args.tag.replace("/", "-")
        png = (
            Path(args.plots)
            / f"forecast_{dataset}_{model_name}{tag}_{mixer_of(model_name, args.mixer)}_h{horizon}.png"
        )
        plot_forecasts(model, data, png, title=f"{data.name} {model_name} ({args.mixer}) H={horizon}, seed 0")
    return {
        "dataset": dataset,
        "model": model_name + args.tag,
        "mixer": mixer_of(model_name, args.mixer),
        "horizon": horizon,
        "seed": seed,
        "mse": test["mse"],
        "mae": test["mae"],
        "test_windows": test["windows"],
        "best_val_mse": hist["best_val_mse"],
        "epochs_run": len(hist["epochs"]),
        "steps": hist["steps"],
        "params": model.num_parameters(),
        "seconds": round(time.time() - t0, 1),
        "settings": {
            "seq_len": args.seq_len,
            "d_model": args.d_model,
            "n_heads": args.n_heads,
            "d_state": args.d_state,
            "batch_size": args.batch_size,
            "lr": lr,
            "epochs": args.epochs,
            "patience": args.patience,
            "max_train_windows": args.max_train_windows,
            "max_eval_windows": args.max_eval_windows,
            "threads": torch.get_num_threads(),
            "time_features": not args.no_time_features,
        },
    }


def cmd_run(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {_key(json.loads(line)) for line in out.read_text().splitlines() if line.strip()}
    grid = [
        (d, m, h, s) for s in args.seeds for h in args.horizons for d in args.datasets for m in args.models
    ]
    for d, m, h, s in grid:
        if (d, m + args.tag, mixer_of(m, args.mixer), h, s) in done:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {d} {m} ({args.mixer}) H={h} seed={s}", flush=True)
        rec = run_one(args, d, m, h, s)
        print(f"  -> test mse {rec['mse']:.4f} mae {rec['mae']:.4f} ({rec['seconds']} s)", flush=True)
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return 0


def _fmt(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def naive_baselines(dataset: str, horizon: int, seq_len: int) -> dict:
    """Test MSE/MAE of two trivial forecasts: repeat the last look-back value; predict 0 (the train mean)."""
    from transmamba.forecasting.data import load_forecast_data

    w = load_forecast_data(data_path(dataset), seq_len=seq_len, pred_len=horizon).test
    x, y, _, _ = w.batch(torch.arange(len(w)))
    t = y[:, -horizon:]
    last = x[:, -1:].expand_as(t)
    return {
        "repeat-last": (float(((t - last) ** 2).mean()), float((t - last).abs().mean())),
        "zero": (float((t**2).mean()), float(t.abs().mean())),
    }


def cmd_report(args) -> int:
    recs = [
        json.loads(line)
        for p in args.results
        if Path(p).is_file()
        for line in Path(p).read_text().splitlines()
        if line.strip()
    ]
    if not recs:
        print("no results", file=sys.stderr)
        return 1
    base = ["mambaformer", "attention-mamba", "mamba-attention", "mamba", "transformer"]

    def rank(m: str) -> tuple:  # untagged variants first, then each tag, in the paper's order
        name, _, tag = m.partition("/")
        return (tag, base.index(name) if name in base else len(base), m)

    order = sorted({r["model"] for r in recs} | set(base), key=rank)
    lines = []
    groups: dict = {}
    mixers = sorted({r["mixer"] for r in recs if r["mixer"] != "-"}) or ["-"]
    for r in recs:  # transformer runs ("-") go into every mixer's table
        for mx in mixers if r["mixer"] == "-" else [r["mixer"]]:
            groups.setdefault((r["dataset"], mx, r["horizon"], r["model"]), []).append(r)
    datasets = sorted({r["dataset"] for r in recs})
    for ds in datasets:
        rows = sorted(
            {(r["model"], r["mixer"]) for r in recs if r["dataset"] == ds},
            key=lambda mm: (order.index(mm[0]), mm[1]),
        )
        horizons = sorted({r["horizon"] for r in recs if r["dataset"] == ds})
        cell = {}  # (model, mixer, h) -> list of records
        for r in recs:
            if r["dataset"] == ds:
                cell.setdefault((r["model"], r["mixer"], r["horizon"]), []).append(r)
        best = {}
        for h in horizons:
            means = {mm: statistics.mean(x["mse"] for x in cell[(*mm, h)]) for mm in rows if (*mm, h) in cell}
            best[h] = min(means, key=means.get)
        lines.append(
            f"\n**{ds}** — test MSE / MAE, mean ± std over the seeds listed; lowest mean MSE in bold\n"
        )
        lines.append(
            "| model (Mamba sub-layer) | " + " | ".join(f"H={h} MSE | H={h} MAE" for h in horizons) + " |"
        )
        lines.append("|---|" + "---|---|" * len(horizons))
        for mm in rows:
            cells = []
            for h in horizons:
                g = cell.get((*mm, h))
                if not g:
                    cells += ["–", "–"]
                    continue
                seeds = ",".join(str(x["seed"]) for x in sorted(g, key=lambda x: x["seed"]))
                mse_s = _fmt([x["mse"] for x in g]) + f" (s{seeds})"
                cells += [f"**{mse_s}**" if best[h] == mm else mse_s, _fmt([x["mae"] for x in g])]
            label = mm[0] if mm[1] == "-" else f"{mm[0]} ({mm[1]})"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if args.naive:
            seq_len = next(r["settings"]["seq_len"] for r in recs if r["dataset"] == ds)
            naive = {h: naive_baselines(ds, h, seq_len) for h in horizons}
            for name in ("repeat-last", "zero"):
                vals = " | ".join(f"{naive[h][name][0]:.3f} | {naive[h][name][1]:.3f}" for h in horizons)
                lines.append(f"| *{name} (trivial)* | {vals} |")
    text = "\n".join(lines) + "\n"
    if args.md:
        Path(args.md).write_text(text)
    print(text)
    if args.png:
        mixer = args.plot_mixer or max(mixers, key=lambda mx: sum(r["mixer"] == mx for r in recs))
        naive_all = {}
        if args.naive:
            for ds in datasets:
                seq_len = next(r["settings"]["seq_len"] for r in recs if r["dataset"] == ds)
                hs = sorted({r["horizon"] for r in recs if r["dataset"] == ds})
                naive_all[ds] = {h: naive_baselines(ds, h, seq_len) for h in hs}
        core = [m for m in order if "/" not in m]  # tagged variants stay in the tables only
        _plot({k: v for k, v in groups.items() if k[1] == mixer}, datasets, core, args.png, mixer, naive_all)
    return 0


def _plot(groups, datasets, order, png, mixer, naive_all):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        keys = [k for k in groups if k[0] == ds]
        horizons = sorted({k[2] for k in keys})
        models = [m for m in order if any(k[3] == m for k in keys)]
        width = 0.8 / max(len(models), 1)
        for i, m in enumerate(models):
            xs, ys, es = [], [], []
            for j, h in enumerate(horizons):
                g = [x["mse"] for k in keys if k[2] == h and k[3] == m for x in groups[k]]
                if g:
                    xs.append(j + (i - (len(models) - 1) / 2) * width)
                    ys.append(statistics.mean(g))
                    es.append(statistics.stdev(g) if len(g) > 1 else 0.0)
            ax.bar(xs, ys, width, yerr=es, label=m, capsize=2)
        for j, h in enumerate(horizons):
            for name, style in (("zero", ":"), ("repeat-last", "--")):
                if ds in naive_all and h in naive_all[ds]:
                    y = naive_all[ds][h][name][0]
                    ax.hlines(
                        y,
                        j - 0.45,
                        j + 0.45,
                        colors="k",
                        linestyles=style,
                        lw=1,
                        label=f"{name} forecast" if j == 0 else None,
                    )
        ax.set_xticks(range(len(horizons)), [f"H={h}" for h in horizons])
        ax.set_ylabel("test MSE (standardised)")
        ax.set_title(f"{ds} (Mamba sub-layer: {mixer}; bars: mean ± std over seeds)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and test a grid of runs")
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    strs = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    r.add_argument("--datasets", type=strs, default=["etth1", "exchange"])
    r.add_argument("--models", type=strs, default=["mambaformer", "attention-mamba", "mamba", "transformer"])
    r.add_argument("--mixer", default="mamba1")
    r.add_argument("--horizons", type=ints, default=[96, 192])
    r.add_argument("--seeds", type=ints, default=[0, 1])
    r.add_argument("--seq-len", type=int, default=192)
    r.add_argument("--d-model", type=int, default=32)
    r.add_argument("--n-heads", type=int, default=4)
    r.add_argument("--d-state", type=int, default=16)
    r.add_argument("--dropout", type=float, default=0.05)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--lr", type=float, default=None, help="default: the paper's per dataset")
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--patience", type=int, default=3)
    r.add_argument("--max-train-windows", type=int, default=None)
    r.add_argument("--max-eval-windows", type=int, default=None)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--plots", default=None, help="folder for forecast PNGs of seed-0 runs")
    r.add_argument("--no-time-features", action="store_true", help="embed values only")
    r.add_argument("--tag", default="", help="suffix for the model name in the results (e.g. '/no-time')")
    r.add_argument("--out", default="runs/forecasting.jsonl")
    r.set_defaults(func=cmd_run)
    q = sub.add_parser("report", help="markdown tables and a bar plot from results")
    q.add_argument("--results", nargs="+", required=True)
    q.add_argument("--md", default=None)
    q.add_argument("--png", default=None)
    q.add_argument("--naive", action="store_true", help="add repeat-last / zero forecasts (reads the data)")
    q.add_argument("--plot-mixer", default=None, help="which mixer's runs to plot (default: the most runs)")
    q.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
