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
    try:
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
