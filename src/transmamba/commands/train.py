"""`transmamba train`: train a preset on the bundled Shakespeare or on your own text.

    transmamba train --preset transmamba-tiny --max-steps 200
    transmamba train --preset transmamba-tiny --data my_corpus/ --config run.yaml --lr 1e-3
    transmamba train --preset transmamba-tiny --model.d_model 96 --model.transpoints "[0, 64, 128, 192]"
    torchrun --nproc_per_node 4 -m transmamba train --preset transmamba-400m --data big.jsonl

Every TrainConfig field is a flag (`--seq-len`; `--seq_len` works too) and a YAML key (`seq_len`);
flags win over the YAML file, which wins over the defaults. `--model.KEY VALUE` overrides one field of
the preset's ModelConfig.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from transmamba.commands._args import CollectingParser
from transmamba.training.config import (
    ConfigError,
    TrainConfig,
    coerce,
    field_type,
    parse_scalar,
    unknown_key_message,
)

MODEL_PREFIX = "--model."


def add_parser(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    """``subparsers.add_parser`` with the collecting parser class (argparse has no per-parser hook)."""
    saved = subparsers._parser_class
    subparsers._parser_class = CollectingParser
    try:
        return subparsers.add_parser(name, allow_abbrev=False, **kwargs)
    finally:
        subparsers._parser_class = saved


def add_config_arguments(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field (default: not given, so YAML and defaults can fill it)."""
    group = parser.add_argument_group("training options (also YAML keys)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model" or f.name in skip:
            continue
        flags = [f"--{f.name.replace('_', '-')}"]  # --max_steps is accepted too (commands._args.Parser)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if default is False or default is True:
            kw.update(nargs="?", const="true", metavar="BOOL")
        else:
            kw.update(metavar=f.name.upper())
        group.add_argument(*flags, **kw)
    parser.add_argument(
        "--config", metavar="FILE.yaml", default=None,
        help="YAML file of TrainConfig keys (and a `model:` mapping); command-line flags win",
    )
    parser.epilog = (
        "Model overrides: --model.KEY VALUE sets one ModelConfig field of the preset, e.g. "
        "--model.d_model 96 --model.pattern 'T-T-T-' --model.transpoints '[0, 32, 64]'."
    )


def split_extra(extra: list[str]) -> dict[str, Any]:
    """``--model.KEY VALUE`` / ``--model.KEY=VALUE`` pairs -> {KEY: value}; anything else is an error."""
    valid = [f"--{n.replace('_', '-')}" for n in TrainConfig.field_names() if n != "model"] + ["--config"]
    out: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if arg.startswith(MODEL_PREFIX):
            key, eq, value = arg[len(MODEL_PREFIX) :].partition("=")
            if not eq:
                if i + 1 >= len(extra):
                    raise ConfigError(f"{arg} needs a value")
                value = extra[i + 1]
                i += 1
            if not key:
                raise ConfigError(f"{arg}: expected --model.KEY VALUE")
            out[key.replace("-", "_")] = parse_scalar(value)
        elif arg.startswith("-"):
            name = arg.split("=", 1)[0]
            norm = "--" + name.lstrip("-").replace("_", "-")
            raise ConfigError(unknown_key_message(norm, valid, "command line").replace(
                "Valid keys", "Valid flags") + " (and --model.KEY VALUE for model fields)")
        else:
            raise ConfigError(f"unexpected argument {arg!r} (options look like --key value)")
        i += 1
    return out


def config_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig defaults < ``defaults`` (a command's own) < YAML < command line, all validated."""
    values: dict[str, Any] = dict(defaults or {})
    if getattr(args, "config", None):
        values.update(TrainConfig.from_yaml(args.config))
    model_over = dict(values.pop("model", None) or {})
    for name in TrainConfig.field_names():
        if name != "model" and name in vars(args):
            values[name] = coerce(name, getattr(args, name), field_type(name))
    model_over.update(split_extra(getattr(args, "_extra_args", [])))
    values["model"] = model_over
    return TrainConfig.from_dict(values, source=getattr(args, "config", None) or "command line")


def register(subparsers) -> None:
    parser = add_parser(
        subparsers, "train",
        help="train a model preset on text (default: the bundled Shakespeare plays)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def report_errors(fn):
    """Kept for the commands built on this one: every error now reaches `transmamba.cli.main`, which prints
    one line and picks the exit code (2 usage, 1 run failure)."""
    return fn


def resume_command(args: argparse.Namespace, out_dir) -> str:
    """The command line that continues an interrupted run: this one, plus --resume (and its --out-dir)."""
    import shlex

    argv = [a for a in getattr(args, "_argv", None) or sys.argv[1:] if a not in ("--resume", "--overwrite")]
    norm = [a.split("=", 1)[0].replace("_", "-") for a in argv]
    if "--out-dir" not in norm:
        argv += ["--out-dir", str(out_dir)]
    return shlex.join(["transmamba", *argv, "--resume"])


def fit_or_explain(args: argparse.Namespace, trainer):
    """``trainer.fit()``; an interrupted run prints where its checkpoint is and how to continue."""
    from transmamba.training.trainer import TrainingInterrupted

    try:
        return trainer.fit()
    except TrainingInterrupted as stop:
        print(f"interrupted at step {stop.step}: checkpoint saved at {stop.checkpoint}", file=sys.stderr)
        print(f"continue with: {resume_command(args, trainer.cfg.run_dir)}", file=sys.stderr)
        return stop.exit_code


@report_errors
def _run(args: argparse.Namespace) -> int:
    from transmamba.training.trainer import Trainer

    cfg = config_from_args(args)
    result = fit_or_explain(args, Trainer(cfg))
    if isinstance(result, int):
        return result
    if not result.is_main:
        return 0
    if result.evals:
        print(f"final: step {result.step}, val loss {result.final_val_loss:.4f}, "
              f"val bits/byte {result.final_val_bpb:.4f}, best {result.best_val_loss:.4f}")
    print(f"checkpoints: {result.run_dir / 'last'} (best: {result.run_dir / 'best'}); "
          f"metrics: {result.run_dir / 'metrics.csv'}; plot: {result.run_dir / 'curves.png'}")
    return 0


def run(args: argparse.Namespace) -> int:
    return _run(args)
