"""`transmamba convert SRC OUT --to FORMAT`: rewrite a checkpoint directory in another format.

SRC may be a native, HF transformers or mamba_ssm directory (detected from its config.json); OUT gets
config.json + model.safetensors in the target format, plus SRC's tokenizer files. The format choices are
a registry (`TARGETS`), so other conversions can be added as further `--to` values.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TARGETS = {
    "native": "this library's format (config.json with a layer pattern); every model, TransMamba included",
    "hf": "Hugging Face transformers (mamba2, mamba, llama, qwen2, bamba, jamba or nemotron_h; "
    "--model-type picks one, default the first that fits)",
    "transmamba": "a Transformer ('*' attention + '-' MLP layers: this library's, or an HF llama, qwen2 or "
    "mistral directory) turned into TransMamba, Q -> C, K -> B, V -> x (docs/conversion.md); --transpoints "
    "sets the schedule (default: every TransPoint at max_seq_len, so the result computes the Transformer)",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a checkpoint directory (native / HF transformers / mamba_ssm) to another format",
        description="Load SRC (a transmamba, HF transformers or mamba_ssm checkpoint directory; the kind is "
        "read from its config.json) and write it to OUT in the format --to names. Formats: "
        + "; ".join(f"{k}: {v}" for k, v in TARGETS.items())
        + ". Runs on the CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="checkpoint directory to read")
    p.add_argument("out", metavar="OUT", help="directory to write (created if needed)")
    p.add_argument("--to", choices=sorted(TARGETS), default="hf", help="target format")
    p.add_argument(
        "--model-type",
        "--model_type",
        dest="model_type",
        metavar="TYPE",
        default=None,
        help="with --to hf: the HF model_type to write (None: the first that fits the pattern)",
    )
    p.add_argument(
        "--transpoints",
        metavar="SCHEDULE",
        default=None,
        help="with --to transmamba: TransPoints of the converted layers, a name (V1..V9, scaled to "
        "max_seq_len) or a list '0,64,128' (default: all at max_seq_len, the Transformer's function)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transmamba.commands._args import checkpoint_arg
    from transmamba.errors import UsageError, one_line
    from transmamba.models.lm import CausalLM

    src, out = checkpoint_arg(args.src, flag="SRC"), Path(args.out)
    if args.model_type is not None and args.to != "hf":
        raise UsageError("--model-type applies to --to hf only")
    if out.resolve() == src.resolve():
        raise UsageError("OUT must differ from SRC")
    if args.transpoints is not None and args.to != "transmamba":
        raise UsageError("--transpoints applies to --to transmamba only")
    try:
        if args.to == "transmamba":
            model = _to_transmamba(src, args.transpoints)
            model.save_pretrained(out)
        else:
            model = CausalLM.from_pretrained(src)
            model.save_pretrained(out, format=args.to, model_type=args.model_type)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(one_line(err)) from None
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    for name in copied:
        shutil.copyfile(src / name, out / name)
    extra = f" (+ {', '.join(copied)})" if copied else ""
    print(
        f"wrote {args.to} checkpoint {out}: pattern {model.config.pattern}, "
        f"{model.num_parameters():,} parameters{extra}"
    )
    return 0


def _to_transmamba(src: Path, transpoints: str | None):
    """SRC's Transformer converted to TransMamba (`transmamba.conversion`), schedule set if given."""
    from transmamba.conversion import convert_to_transmamba
    from transmamba.conversion.teacher import load_teacher
    from transmamba.models.schedules import parse_schedule

    teacher, _ = load_teacher(src)
    model = convert_to_transmamba(teacher)
    if transpoints is not None:
        model.set_transpoints(parse_schedule(transpoints), train_len=model.config.max_seq_len)
    return model
