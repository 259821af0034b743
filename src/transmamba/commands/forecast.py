"""`transmamba forecast train|eval`: long-horizon forecasting with Mambaformer and its comparison models.

    transmamba forecast train --data ETTh1.csv --horizon 96 --model mambaformer --out runs/etth1-96
    transmamba forecast eval --checkpoint runs/etth1-96 [--data ETTh1.csv] [--split test] [--plot f.png]

Without ``--data`` a deterministic synthetic hourly series is used, so both run out of the box.

Defaults are sized for a laptop: the paper's look-back 192, one layer, d_state 16, lr halved every epoch,
10 epochs with early stopping (patience 3), but d_model 32 (4 heads), batch 32, lr 1e-3 and per-window
instance normalisation (RevIN, --no-revin turns it off): one ETTh1 epoch takes minutes on 2 CPU cores and
beats the repeat-last and training-mean forecasts. ``--paper`` selects the paper's ETTh1 script instead
(d_model 512, 8 heads, batch 128, lr 1e-4, no RevIN): that needs a GPU. Explicit flags win over both. The
field's flag names are accepted too: --pred_len, --seq_len, --train_epochs, --learning_rate, --e_layers,
--batch_size, --d_model, --n_heads (every flag takes dashes or underscores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from transmamba.commands._args import float_arg, int_arg
from transmamba.errors import RunError, UsageError

DESCRIPTION = __doc__

# Settings that differ between the laptop defaults and the paper's ETTh1 script (--paper).
_LAPTOP = {"d_model": 32, "n_heads": 4, "batch_size": 32, "lr": 1e-3, "revin": True}
_PAPER = {"d_model": 512, "n_heads": 8, "batch_size": 128, "lr": 1e-4, "revin": False}


def _fill_defaults(args) -> None:
    """Unset size / recipe flags take the laptop defaults, or the paper's with --paper."""
    base = _PAPER if args.paper else _LAPTOP
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _add_data_args(p: argparse.ArgumentParser, *, for_eval: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="LTSF-format CSV ('date' column, then one column per variable). "
        + (
            "Required when the checkpoint was trained on a file (a checkpoint never names files to "
            "read); default: the synthetic series it was trained on."
            if for_eval
            else "Default: a synthetic hourly series (daily+weekly seasonality, trend, noise)."
        ),
    )
    if for_eval:
        return
    g.add_argument("--horizon", "--pred_len", "--pred-len", dest="horizon",
                   type=int_arg(1, 100_000), default=96,
                   help="forecast length H (default 96)")
    g.add_argument("--seq-len", "--seq_len", dest="seq_len", type=int_arg(2, 100_000), default=192,
                   help="look-back length L (default 192, the paper's)")
    g.add_argument(
        "--features",
        choices=["M", "S"],
        default="M",
        help="M: all variables in and out (default); S: the --target column only",
    )
    g.add_argument("--target", default="OT", help="target column for --features S (default OT)")
    g.add_argument(
        "--split",
        choices=["auto", "ratio", "ett-hour", "ett-minute"],
        default="auto",
        help="auto: ETT 12/4/4-month borders for ETTh*/ETTm* files, else 70/10/20 by ratio",
    )
    g.add_argument("--synthetic-steps", type=int_arg(16, 10_000_000), default=4000,
                   help="length of the synthetic series")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from transmamba.forecasting.model import ARCHS, MIXERS

    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        choices=ARCHS,
        default="mambaformer",
        help="mambaformer (Mamba→attention→Mamba, default), attention-mamba, mamba-attention, "
        "mamba (two Mamba blocks), transformer (decoder-only)",
    )
    g.add_argument(
        "--mixer",
        choices=MIXERS,
        default="mamba1",
        help="the Mamba sub-layer: mamba1 (the paper's, default), mamba2 or transmamba",
    )
    g.add_argument(
        "--d-model", "--d_model", dest="d_model", type=int_arg(1, 65536), default=None,
        help=f"model width (default {_LAPTOP['d_model']}: an ETTh1 epoch in minutes on 2 CPU cores; the "
        f"official code's {_PAPER['d_model']} with --paper, which needs a GPU)",
    )
    g.add_argument("--n-layers", "--e_layers", "--e-layers", dest="n_layers",
                   type=int_arg(1, 1024), default=1,
                   help="repeats of the architecture's layer (default 1)")
    g.add_argument(
        "--n-heads", "--n_heads", dest="n_heads", type=int_arg(1, 1024), default=None,
        help=f"attention heads (default {_LAPTOP['n_heads']}; the paper's {_PAPER['n_heads']} with --paper)",
    )
    g.add_argument("--d-state", type=int_arg(1, 4096), default=16, help="SSM state size N (default 16)")
    g.add_argument("--d-conv", type=int_arg(1, 64), default=4, help="Mamba causal conv width (default 4)")
    g.add_argument("--expand", type=int_arg(1, 64), default=2, help="Mamba inner expansion (default 2)")
    g.add_argument(
        "--transpoint",
        type=int_arg(0),
        default=0,
        help="--mixer transmamba: tokens before this position use attention (default 0)",
    )
    g.add_argument("--dropout", type=float_arg(0, 1, hi_open=True), default=0.05,
                   help="dropout (default 0.05)")
    g.add_argument(
        "--no-time-features",
        action="store_true",
        help="embed values only (the paper adds a linear embedding of the calendar features)",
    )
    g.add_argument(
        "--revin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-window instance normalisation of the look-back (RevIN without affine; not in the paper). "
        "Default on: without it a model this small barely beats predicting the training mean on ETTh1; "
        "off with --paper",
    )
    g.add_argument(
        "--paper",
        action="store_true",
        help=f"the paper's ETTh1 script: d_model {_PAPER['d_model']}, batch {_PAPER['batch_size']}, "
        f"lr {_PAPER['lr']:g}, no RevIN (needs a GPU; explicit flags still win)",
    )
    g.add_argument(
        "--positional",
        choices=["default", "yes", "no"],
        default="default",
        help="sinusoidal positions: default = as the paper (only attention-mamba, transformer)",
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", "--train_epochs", "--train-epochs", dest="epochs",
                   type=int_arg(1, 100_000), default=10,
                   help="maximum epochs (default 10)")
    g.add_argument(
        "--batch-size", "--batch_size", dest="batch_size", type=int_arg(1, 1_000_000), default=None,
        help=f"batch size (default {_LAPTOP['batch_size']}; the paper's {_PAPER['batch_size']} with --paper, "
        "64 in its Exchange script)",
    )
    g.add_argument(
        "--lr", "--learning_rate", "--learning-rate", dest="lr",
        type=float_arg(0, 10, lo_open=True), default=None,
        help=f"Adam learning rate (default {_LAPTOP['lr']:g}; the paper's {_PAPER['lr']:g} with --paper, "
        "1e-3 in its Exchange script)",
    )
    g.add_argument(
        "--lradj",
        choices=["type1", "constant"],
        default="type1",
        help="type1: halve the learning rate after every epoch (default); constant",
    )
    g.add_argument("--patience", type=int_arg(1), default=3,
                   help="early-stopping patience in epochs (default 3)")
    g.add_argument(
        "--max-train-windows",
        type=int_arg(1),
        default=None,
        help="use a random subset of this many training windows per epoch (CPU budget)",
    )
    g.add_argument(
        "--max-eval-windows",
        type=int_arg(1),
        default=None,
        help="early-stop on the first N validation windows only (the test split is always full)",
    )
    g.add_argument("--seed", type=int_arg(0, 2**31), default=0,
                   help="seed for weights and batch order (default 0)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int_arg(1, 1024), default=None,
                   help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="print only the final metrics")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "forecast",
        help="train / evaluate time-series forecasters (Mambaformer)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="forecast_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    t = sub.add_parser(
        "train",
        help="train on the train split, early-stop on val, report test MSE/MAE",
        description="Train a forecaster; writes the best checkpoint, metrics.json and a PNG.",
    )
    _add_data_args(t)
    _add_model_args(t)
    _add_train_args(t)
    t.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory (default runs/forecast/<data>-<model>-<horizon>)",
    )
    t.add_argument("--no-plot", action="store_true", help="skip the forecast PNG")
    _add_common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: MSE/MAE on a split, optional PNG",
        description="Evaluate a checkpoint written by `forecast train`.",
    )
    e.add_argument("--checkpoint", required=True, metavar="DIR", help="directory written by forecast train")
    _add_data_args(e, for_eval=True)
    e.add_argument("--split", choices=["train", "val", "test"], default="test", help="split (default test)")
    e.add_argument("--plot", default=None, metavar="PNG", help="also write a forecast-vs-truth PNG here")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_common(e)
    e.set_defaults(func=cmd_eval)


def _data_kwargs(args) -> dict:
    return {
        "seq_len": args.seq_len,
        "pred_len": args.horizon,
        "features": args.features,
        "target": args.target,
        "split": args.split,
        "synthetic_steps": args.synthetic_steps,
    }


def cmd_train(args) -> int:
    from transmamba.forecasting.data import ForecastDataError, load_forecast_data
    from transmamba.forecasting.loop import (
        NonFiniteError,
        TrainConfig,
        evaluate,
        train_forecaster,
        write_json,
    )
    from transmamba.forecasting.model import Mambaformer, MambaformerConfig
    from transmamba.forecasting.plot import plot_forecasts

    _fill_defaults(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    if args.d_model % args.n_heads:
        raise UsageError(f"--d-model {args.d_model} must be divisible by --n-heads {args.n_heads}")
    try:
        data = load_forecast_data(args.data, **_data_kwargs(args), seed=args.seed)
    except ForecastDataError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None
    torch.manual_seed(args.seed)
    cfg = MambaformerConfig(
        n_vars=data.n_vars,
        n_time_features=data.n_time_features,
        arch=args.model,
        mixer=args.mixer,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        d_state=args.d_state,
        d_conv=args.d_conv,
        expand=args.expand,
        transpoint=args.transpoint,
        dropout=args.dropout,
        positional=None if args.positional == "default" else args.positional == "yes",
        time_features=not args.no_time_features,
        revin=args.revin,
    )
    model = Mambaformer(cfg)
    tcfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lradj=args.lradj,
        patience=args.patience,
        max_train_windows=args.max_train_windows,
        max_eval_windows=args.max_eval_windows,
        seed=args.seed,
    )
    out = Path(args.out or f"runs/forecast/{data.name}-{args.model}-{args.mixer}-h{args.horizon}")
    extra = {
        "data": {  # no path: a checkpoint never names a file to read (eval takes --data)
            "synthetic": args.data is None,
            **_data_kwargs(args),
            "name": data.name,
            "freq": data.freq,
            "columns": data.columns,
            "borders": data.borders,
            "seed": args.seed,
        },
        "scaler": data.scaler.state_dict() if data.scaler else None,
        "train": tcfg.to_dict(),
    }
    say(
        f"{data.name}: {len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test windows, "
        f"{data.n_vars} variables; {args.model} ({args.mixer}) {model.num_parameters():,} parameters -> {out}"
    )
    t0 = time.time()
    saved: list[dict] = []

    def save(m, info: dict) -> None:
        m.save_pretrained(out, {**extra, "best": info})
        saved.append(info)

    try:
        history = train_forecaster(model, data, tcfg, log=say, checkpoint=save, progress=not args.quiet)
    except NonFiniteError as err:
        where = (f"the last good checkpoint is {out} (epoch {saved[-1]['epoch']}, val mse "
                 f"{saved[-1]['val_mse']:.4f})" if saved else "no checkpoint was written")
        raise RunError(f"{err}; {where}") from None
    test = evaluate(model, data.test, batch_size=max(64, args.batch_size), progress=not args.quiet)
    metrics = {
        "data": data.name,
        "model": args.model,
        "mixer": args.mixer,
        "revin": args.revin,
        "d_model": args.d_model,
        "horizon": args.horizon,
        "seed": args.seed,
        "test_mse": test["mse"],
        "test_mae": test["mae"],
        "test_windows": test["windows"],
        "best_val_mse": history["best_val_mse"],
        "epochs_run": len(history["epochs"]),
        "steps": history["steps"],
        "parameters": model.num_parameters(),
        "seconds": round(time.time() - t0, 1),
        "history": history["epochs"],
    }
    write_json(out / "metrics.json", metrics)
    if not args.no_plot:
        png = plot_forecasts(
            model,
            data,
            out / "forecast.png",
            title=f"{data.name} {args.model} ({args.mixer}) H={args.horizon}",
        )
        say(f"plot: {png}")
    print(f"test mse {test['mse']:.4f} mae {test['mae']:.4f} ({test['windows']} windows, H={args.horizon})")
    return 0


def cmd_eval(args) -> int:
    from transmamba.forecasting.data import ForecastDataError, load_forecast_data
    from transmamba.forecasting.loop import evaluate
    from transmamba.forecasting.model import Mambaformer
    from transmamba.forecasting.plot import plot_forecasts

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, meta = Mambaformer.from_pretrained(args.checkpoint)
    except FileNotFoundError as err:
        raise UsageError(f"--checkpoint {err}; pass a folder from `transmamba forecast train`") from None
    d = _checked_data_meta(meta, args.checkpoint)
    path = args.data
    if path is None and not d["synthetic"]:
        raise UsageError(f"{args.checkpoint} was trained on {d['name']!r}; pass its CSV with --data PATH "
                         "(a checkpoint never names files to read)")
    try:
        data = load_forecast_data(
            path,
            seq_len=d["seq_len"],
            pred_len=d["pred_len"],
            features=d["features"],
            target=d["target"],
            split=d["split"],
            synthetic_steps=d["synthetic_steps"],
            seed=d["seed"],
        )
    except ForecastDataError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None
    if data.n_vars != model.config.n_vars or data.n_time_features != model.config.n_time_features:
        raise UsageError(
            f"the data has {data.n_vars} variables / {data.n_time_features} time features, the "
            f"checkpoint expects {model.config.n_vars} / {model.config.n_time_features}; pass the --data "
            "it was trained on"
        )
    res = evaluate(model, data.split(args.split), batch_size=64, progress=not args.quiet)
    res = {
        "split": args.split,
        "mse": res["mse"],
        "mae": res["mae"],
        "windows": res["windows"],
        "horizon": d["pred_len"],
    }
    if args.plot:
        plot_forecasts(model, data, args.plot, split=args.split)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{args.split} mse {res['mse']:.4f} mae {res['mae']:.4f} ({res['windows']} windows, "
            f"H={res['horizon']})"
        )
    return 0


# bounds on what an (untrusted) checkpoint's data section may ask for
_DATA_FIELDS = {"seq_len": (2, 100_000), "pred_len": (1, 100_000), "synthetic_steps": (16, 10_000_000),
                "seed": (0, 2**31)}


def _checked_data_meta(meta: dict, where) -> dict:
    """The checkpoint's data section, type- and range-checked; never a path to read. Old checkpoints that
    stored ``path`` count as trained on a file (its name is shown, the path is ignored)."""
    d = meta.get("data")
    if not isinstance(d, dict):
        raise UsageError(f"{where}: config.json has no 'data' mapping; re-train with "
                         "`transmamba forecast train`")
    out = {}
    for key, (lo, hi) in _DATA_FIELDS.items():
        v = d.get(key, 0 if key == "seed" else None)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise UsageError(f"{where}: config.json data.{key} must be a whole number in [{lo}, {hi}]")
        out[key] = v
    for key, choices in (("features", ("M", "S")), ("split", ("auto", "ratio", "ett-hour", "ett-minute"))):
        if d.get(key) not in choices:
            raise UsageError(f"{where}: config.json data.{key} must be one of {choices}")
        out[key] = d[key]
    out["target"] = str(d.get("target", "OT"))[:200]
    out["name"] = str(d.get("name", "?"))[:200]
    out["synthetic"] = bool(d["synthetic"]) if "synthetic" in d else d.get("path") is None
    return out
