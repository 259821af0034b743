"""`transmamba distill`: turn a trained Transformer into TransMamba and distil it while lowering TransPoints.

    transmamba distill --teacher runs/transformer-tiny --target V9 --max-steps 300
    transmamba distill --teacher path/to/hf-llama --seq-len 512 --target "[0, 64, 128, 256]"

The teacher (a run or checkpoint folder written by `transmamba train`, or an HF Llama/Qwen2/Mistral
directory with its tokenizer.json) is converted with every TransPoint at --seq-len (the student starts
equal to the teacher); each layer's TransPoint then moves linearly to its --target over --lower-steps
optimizer steps while the student learns KL(teacher || student) (+ optional CE and hidden-state terms).
Every training flag of `transmamba train` applies (data, steps, lr, checkpoints, --resume, progress,
plots); checkpoints are student checkpoints that `generate`, `eval` and `plan` read.
"""

from __future__ import annotations

import argparse

from transmamba.commands._args import float_arg, int_arg
from transmamba.commands.train import (
    add_config_arguments,
    add_parser,
    config_from_args,
    fit_or_explain,
    report_errors,
)


def register(subparsers) -> None:
    p = add_parser(subparsers, "distill", help="convert a Transformer to TransMamba and distil it",
                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", required=True, metavar="DIR",
                   help="teacher: run/checkpoint folder of a '*-' model, "
                   "or an HF Llama/Qwen2/Mistral directory")
    g.add_argument("--target", default="V9", metavar="SCHEDULE",
                   help="final TransPoints: a named schedule scaled to --seq-len (V1..V9), or a JSON list "
                   "with one P per layer, e.g. '[0, 64, 128, 256]' (default: V9)")
    g.add_argument("--lower-steps", dest="lower_steps", type=int_arg(1), default=None, metavar="N",
                   help="optimizer steps over which TransPoints move to the target (default: half of "
                   "--max-steps)")
    g.add_argument("--kl-weight", dest="kl_weight", type=float_arg(0), default=1.0,
                   help="weight of KL(teacher || student) on the next-token distributions (default: 1)")
    g.add_argument("--ce-weight", dest="ce_weight", type=float_arg(0), default=0.0,
                   help="weight of the student's cross entropy on the data (default: 0)")
    g.add_argument("--hidden-weight", dest="hidden_weight", type=float_arg(0), default=0.0,
                   help="weight of the normalised MSE between student and teacher block outputs (default: 0)")
    g.add_argument("--temperature", type=float_arg(0, lo_open=True), default=1.0,
                   help="softmax temperature of the KL (default: 1)")
    add_config_arguments(p, skip=("preset", "tokenizer", "vocab_size"))
    p.set_defaults(func=run)


def parse_target(text: str, n_layers: int, seq_len: int) -> list[int]:
    from transmamba.conversion.to_transmamba import ConversionError
    from transmamba.models.schedules import parse_schedule, resolve_schedule

    try:
        points = parse_schedule(text)
        return resolve_schedule(points, n_layers, train_len=seq_len if isinstance(points, str) else None)
    except ValueError as err:
        raise ConversionError(f"--target: {err}") from None


@report_errors
def _run(args: argparse.Namespace) -> int:
    from transmamba.conversion import ConversionError, convert_to_transmamba
    from transmamba.conversion.distill import DistillationModel
    from transmamba.conversion.teacher import load_teacher
    from transmamba.training.config import ConfigError
    from transmamba.training.trainer import Trainer

    try:
        teacher, tok = load_teacher(args.teacher)
    except (ConversionError, FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--teacher: {err}") from None
    if tok is None:
        raise ConfigError(f"--teacher {args.teacher}: no tokenizer.json beside the weights; the student must "
                          "read the teacher's token ids")
    defaults = {"preset": "distill", "out_dir": "runs/distill", "tokenizer": str(tok),
                "vocab_size": teacher.config.vocab_size}
    cfg = config_from_args(args, defaults)
    if cfg.seq_len > teacher.config.max_seq_len:
        raise ConfigError(f"--seq-len {cfg.seq_len} is longer than the teacher's max_seq_len "
                          f"{teacher.config.max_seq_len}")
    n_layers = teacher.config.pattern.count("*")
    try:
        target = parse_target(args.target, n_layers, cfg.seq_len)
        student = convert_to_transmamba(teacher, [cfg.seq_len] * n_layers, seed=cfg.seed)
    except ConversionError as err:
        raise ConfigError(str(err)) from None
    lower = args.lower_steps if args.lower_steps is not None else max(1, cfg.max_steps // 2)

    def factory(vocab_size: int):
        if vocab_size != teacher.config.vocab_size:
            raise ConfigError(f"the tokenizer has {vocab_size} tokens but the teacher's vocabulary is "
                              f"{teacher.config.vocab_size}")
        return DistillationModel(student, teacher, target_transpoints=target, lower_steps=lower,
                                 kl_weight=args.kl_weight, ce_weight=args.ce_weight,
                                 hidden_weight=args.hidden_weight, temperature=args.temperature)

    result = fit_or_explain(args, Trainer(cfg, model_factory=factory))
    if isinstance(result, int):  # interrupted: the checkpoint and the --resume command are printed
        return result
    if not result.is_main:
        return 0
    if result.evals:
        print(f"final: step {result.step}, student val loss {result.final_val_loss:.4f} at TransPoints "
              f"{target}")
    print(f"student checkpoints: {result.run_dir / 'last'}; metrics: {result.run_dir / 'metrics.csv'}")
    return 0


def run(args: argparse.Namespace) -> int:
    return _run(args)


