"""`transmamba pointcloud train|eval`: point-cloud classification with PoinTramba (arXiv 2405.15463).

    transmamba pointcloud train                    # synthetic shapes, tiny model: minutes on 2 CPU cores
    transmamba pointcloud train --dataset modelnet40 --data modelnet40_normal_resampled --paper
    transmamba pointcloud train --dataset scanobjectnn --data h5_files --variant hardest --paper
    transmamba pointcloud eval --checkpoint runs/pointcloud/synthetic-pointramba-tiny [--importance f.png]

Without ``--data`` the command generates its data: 8 classes of labelled synthetic shapes (sphere, box,
cylinder, cone, torus, pyramid, capsule, disk) with random scale, rotation and noise, 480 training and 240
test clouds of 256 points. The defaults (``pointramba-tiny``: width 64, 32 groups of 16 points, one
intra-group block, two Mamba blocks; 12 epochs of batch 16, AdamW lr 2e-3, cosine) train in a few minutes on
2 CPU cores. ``--paper`` selects the paper's classifier and recipe (``pointramba``: 19.2 M parameters,
1024 points, 256 groups; 300 epochs, batch 32, lr 3e-4, 10 warm-up epochs): that needs a GPU. Explicit flags
win over both.

A run folder holds ``checkpoints/step-*`` (atomic; ``last`` and ``best`` link to them), ``metrics.json``,
``confusion.png`` (test confusion matrix) and ``importance.png`` (test clouds coloured by their groups'
importance scores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from transmamba.commands._args import float_arg, int_arg

_COUNT = int_arg(1, 1 << 30)  # sizes, steps, counts: a whole number >= 1
_NONNEG = int_arg(0, 1 << 30)  # seeds, warm-up lengths, "0 = off" intervals

DESCRIPTION = __doc__

# Settings that differ between the CPU defaults and the paper's recipe (--paper).
_LAPTOP = {"preset": "pointramba-tiny", "epochs": 12, "batch_size": 16, "lr": 2e-3, "warmup_epochs": 1.0}
_PAPER = {"preset": "pointramba", "epochs": 300, "batch_size": 32, "lr": 3e-4, "warmup_epochs": 10.0}


def _fill_defaults(args) -> None:
    base = _PAPER if args.paper else _LAPTOP
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _add_data_args(p: argparse.ArgumentParser, *, for_eval: bool = False) -> None:
    from transmamba.pointcloud.data import AUGMENTATIONS, SCANOBJECTNN_VARIANTS

    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=["synthetic", "synthetic-local", "modelnet40", "modelnet10", "scanobjectnn"],
        default=None,
        help="synthetic (default; generated shapes), synthetic-local (classes differ only by small surface "
        "features), modelnet40/modelnet10 (the modelnet40_normal_resampled folder) or scanobjectnn (h5)"
        + ("; default: the checkpoint's" if for_eval else ""),
    )
    g.add_argument(
        "--data", default=None, metavar="PATH", help="data folder for modelnet40/10 and scanobjectnn"
    )
    g.add_argument(
        "--variant",
        choices=sorted(SCANOBJECTNN_VARIANTS),
        default=None,
        help="ScanObjectNN variant: hardest (PB_T50_RS, default), objectbg (OBJ_BG), objectonly (OBJ_ONLY)",
    )
    g.add_argument("--limit", type=_COUNT, default=None, help="read only the first N clouds of each split")
    if for_eval:
        return
    g.add_argument(
        "--num-points",
        "--npoints",
        dest="num_points",
        type=_COUNT,
        default=None,
        help="points per cloud (default: the preset's, 256 tiny / 1024 paper)",
    )
    g.add_argument("--num-classes", type=_COUNT, default=8, help="synthetic data sets: classes (default 8)")
    g.add_argument("--train-size", type=_COUNT, default=480, help="synthetic: training clouds (default 480)")
    g.add_argument("--test-size", type=_COUNT, default=240, help="synthetic: test clouds (default 240)")
    g.add_argument(
        "--augmentation",
        choices=AUGMENTATIONS,
        default=None,
        help="training augmentation (default: scale_translate for ModelNet, rotate for ScanObjectNN, none "
        "for "
        "the synthetic sets)",
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from transmamba.pointcloud.model import MIXERS, ORDERINGS, POOLINGS, PRESETS

    g = p.add_argument_group("model")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help=f"model size (default {_LAPTOP['preset']}; {_PAPER['preset']} with --paper)",
    )
    g.add_argument(
        "--ordering",
        choices=ORDERINGS,
        default=None,
        help="group order for the Mamba blocks: bio (paper, default), importance (descending only), "
        "fps, random",
    )
    g.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=None,
        help="token pooling: importance (paper, default), mean, max",
    )
    g.add_argument(
        "--no-aux", action="store_true", help="train with cross-entropy only (no GLR / score losses)"
    )
    g.add_argument(
        "--mixer",
        choices=MIXERS,
        default=None,
        help="inter-group mixer: mamba1 (paper, default), mamba2, transmamba, attention",
    )
    g.add_argument(
        "--attention-baseline",
        action="store_true",
        help="the all-attention model of the same size (attention blocks instead of Mamba, FPS order)",
    )
    g.add_argument("--groups", "--num-group", dest="groups", type=_COUNT, default=None, help="FPS centres G")
    g.add_argument("--group-size", type=_COUNT, default=None, help="neighbours per group K")
    g.add_argument("--dim", "--trans-dim", dest="dim", type=_COUNT, default=None, help="token width")
    g.add_argument("--depth", type=_COUNT, default=None, help="inter-group blocks")
    g.add_argument(
        "--transpoint",
        type=_NONNEG,
        default=None,
        help="--mixer transmamba: tokens before it use attention (default: the number of groups)",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available; default)")
    p.add_argument("--threads", type=_COUNT, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--quiet", action="store_true", help="print only the final metrics")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pointcloud",
        help="train / evaluate point-cloud classifiers (PoinTramba)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="pointcloud_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    t = sub.add_parser(
        "train",
        help="train a classifier; report overall and mean class accuracy on the test split",
        description="Train PoinTramba; writes checkpoints, metrics.json, confusion.png and importance.png.",
    )
    _add_data_args(t)
    _add_model_args(t)
    g = t.add_argument_group("training")
    g.add_argument("--paper", action="store_true", help="the paper's model and recipe (GPU)")
    g.add_argument("--epochs", type=_COUNT, default=None, help=f"epochs (default {_LAPTOP['epochs']})")
    g.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=_COUNT,
        default=None,
        help=f"clouds per step (default {_LAPTOP['batch_size']})",
    )
    g.add_argument(
        "--lr",
        "--learning-rate",
        dest="lr",
        type=float_arg(0, lo_open=True),
        default=None,
        help=f"peak AdamW learning rate (default {_LAPTOP['lr']})",
    )
    g.add_argument("--weight-decay", type=float_arg(0), default=0.05, help="AdamW weight decay (default .05)")
    g.add_argument(
        "--warmup-epochs", type=float_arg(0), default=None, help="linear warm-up epochs before the cosine"
    )
    g.add_argument(
        "--seed", type=_NONNEG, default=0, help="seed of the model, the batches and the synthetic data"
    )
    g.add_argument("--max-steps", type=_COUNT, default=None, help="stop after N optimizer steps (smoke)")
    t.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run folder (default runs/pointcloud/<dataset>-<preset>[-<switches>])",
    )
    t.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    _add_common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: OA, mAcc, confusion matrix, importance PNG",
        description="Evaluate a run folder (its best checkpoint) or a checkpoint step folder.",
    )
    e.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="run folder or checkpoints/step-* folder"
    )
    e.add_argument("--which", choices=["best", "last"], default="best", help="checkpoint of a run folder")
    _add_data_args(e, for_eval=True)
    e.add_argument("--confusion", default=None, metavar="PNG", help="write the confusion matrix here")
    e.add_argument("--importance", default=None, metavar="PNG", help="write importance-coloured clouds here")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_common(e)
    e.set_defaults(func=cmd_eval)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _model_config(args, num_classes: int):
    from transmamba.pointcloud.model import PoinTrambaConfig, attention_baseline

    over = {"num_classes": num_classes}
    for flag, field in (
        ("ordering", "ordering"),
        ("pooling", "pooling"),
        ("mixer", "mixer"),
        ("groups", "num_groups"),
        ("group_size", "group_size"),
        ("dim", "dim"),
        ("depth", "depth"),
        ("transpoint", "transpoint"),
        ("num_points", "num_points"),
    ):
        if getattr(args, flag) is not None:
            over[field] = getattr(args, flag)
    if args.no_aux:
        over["aux_losses"] = False
    cfg = PoinTrambaConfig.from_preset(args.preset, **over)
    return attention_baseline(cfg) if args.attention_baseline else cfg


def _run_name(args) -> str:
    parts = [args.dataset or "synthetic", args.preset]
    if args.attention_baseline:
        parts.append("attention-baseline")
    for flag in ("ordering", "pooling", "mixer"):
        if getattr(args, flag) is not None:
            parts.append(getattr(args, flag))
    if args.no_aux:
        parts.append("no-aux")
    return "-".join(parts)


def cmd_train(args) -> int:
    from transmamba.pointcloud.data import PointCloudDataError, load_pointcloud_data
    from transmamba.pointcloud.loop import TrainConfig, train_classifier, write_json
    from transmamba.pointcloud.model import PoinTramba, PoinTrambaConfig
    from transmamba.pointcloud.plot import plot_confusion, plot_importance

    _fill_defaults(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    device = _device(args.device)
    preset = PoinTrambaConfig.from_preset(args.preset)
    num_points = args.num_points or preset.num_points
    try:
        data = load_pointcloud_data(
            args.dataset or "synthetic",
            args.data,
            num_points=num_points,
            num_classes=args.num_classes,
            train_size=args.train_size,
            test_size=args.test_size,
            variant=args.variant or "hardest",
            augmentation=args.augmentation,
            min_points=args.group_size or preset.group_size,
            seed=args.seed,
            limit=args.limit,
        )
        torch.manual_seed(args.seed)
        cfg = _model_config(args, data.num_classes)
    except (PointCloudDataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = PoinTramba(cfg).to(device)
    tcfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        seed=args.seed,
    )
    out = Path(args.out or f"runs/pointcloud/{_run_name(args)}")
    say(
        f"{data.name}: {len(data.train)}/{len(data.test)} train/test clouds of {num_points} points, "
        f"{data.num_classes} classes; PoinTramba ({cfg.mixer}, {cfg.ordering} order, {cfg.pooling} pooling, "
        f"aux {'on' if cfg.aux_losses else 'off'}) {model.num_parameters():,} parameters on {device} "
        f"({torch.get_num_threads()} threads) -> {out}"
    )
    meta = {"data": data.info, "class_names": data.class_names}
    t0 = time.time()
    history = train_classifier(
        model,
        data,
        tcfg,
        num_points=num_points,
        device=device,
        run_dir=out,
        checkpoint_meta=meta,
        log=say,
        progress=not args.quiet,
        max_steps=args.max_steps,
    )
    final = history["final"]
    metrics = {
        "data": data.name,
        "preset": args.preset,
        "model": cfg.to_dict(),
        "parameters": model.num_parameters(),
        "test_oa": final["oa"],
        "test_macc": final["macc"],
        "best_test_oa": history["best"]["oa"],
        "best_epoch": history["best"]["epoch"],
        "epochs_run": len(history["epochs"]),
        "steps": history["steps"],
        "seconds": round(time.time() - t0, 1),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "class_names": data.class_names,
        "confusion": final["confusion"],
        "history": history["epochs"],
        "train": tcfg.to_dict(),
    }
    write_json(out / "metrics.json", metrics)
    if not args.no_plot:
        plot_confusion(
            final["confusion"],
            data.class_names,
            out / "confusion.png",
            title=f"{data.name} test: OA {final['oa']:.1f}%, mAcc {final['macc']:.1f}%",
        )
        pts, y = next(data.test.batches(4, num_points=num_points))
        plot_importance(model, pts, out / "importance.png", labels=y, class_names=data.class_names)
    print(
        f"test OA {final['oa']:.2f}%  mAcc {final['macc']:.2f}%  (best OA {history['best']['oa']:.2f}% at "
        "epoch "
        f"{history['best']['epoch']}; {metrics['seconds']} s) -> {out}"
    )
    return 0


def cmd_eval(args) -> int:
    from transmamba.pointcloud.data import PointCloudDataError, load_pointcloud_data
    from transmamba.pointcloud.loop import evaluate
    from transmamba.pointcloud.model import PoinTramba
    from transmamba.pointcloud.plot import plot_confusion, plot_importance
    from transmamba.training.checkpoint import STATE_FILE, find_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    folder = Path(args.checkpoint)
    if not (folder / STATE_FILE).is_file():
        found = find_checkpoint(folder, args.which)
        if found is None:
            print(
                f"error: {folder}: no checkpoint (expected a run folder of `pointcloud train`)",
                file=sys.stderr,
            )
            return 2
        folder = found
    try:
        model, _ = PoinTramba.from_pretrained(folder)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    state = json.loads((folder / STATE_FILE).read_text())
    info = dict(state.get("data", {}))
    for key in ("dataset", "variant", "limit"):
        if getattr(args, key) is not None:
            info[key] = getattr(args, key)
    if args.data is not None:
        info["path"] = args.data
    try:
        data = load_pointcloud_data(
            info.get("dataset", "synthetic"),
            info.get("path"),
            num_points=info.get("num_points", 256),
            num_classes=info.get("num_classes", 8),
            train_size=info.get("train_size", 480),
            test_size=info.get("test_size", 240),
            variant=info.get("variant") or "hardest",
            min_points=model.config.group_size,
            seed=info.get("seed", 0),
            limit=info.get("limit"),
        )
    except PointCloudDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if data.num_classes != model.config.num_classes:
        print(
            f"error: the data has {data.num_classes} classes, the checkpoint {model.config.num_classes}",
            file=sys.stderr,
        )
        return 2
    model.to(device)
    n = info.get("num_points", model.config.num_points)
    ev = evaluate(model, data.test, num_points=n, device=device)
    if args.confusion:
        plot_confusion(
            ev["confusion"],
            data.class_names,
            args.confusion,
            title=f"{data.name} test: OA {ev['oa']:.1f}%, mAcc {ev['macc']:.1f}%",
        )
    if args.importance:
        pts, y = next(data.test.batches(4, num_points=n))
        plot_importance(model, pts, args.importance, labels=y, class_names=data.class_names)
    result = {
        "checkpoint": str(folder),
        "data": data.name,
        "oa": ev["oa"],
        "macc": ev["macc"],
        "clouds": ev["clouds"],
    }
    if args.json:
        print(json.dumps({**result, "confusion": ev["confusion"], "class_names": data.class_names}))
    else:
        print(
            f"{data.name}: OA {ev['oa']:.2f}%  mAcc {ev['macc']:.2f}%  over {ev['clouds']} clouds ({folder})"
        )
    return 0
