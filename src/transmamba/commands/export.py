"""`transmamba export`: a training checkpoint -> the single-file ``save_pretrained`` format.

Takes a run folder (its ``last`` checkpoint) or a step folder. A sharded checkpoint (``--parallel fsdp``,
written through torch.distributed.checkpoint by any number of ranks) is gathered into one process; a
single-file checkpoint is copied. The result is what ``CausalLM.from_pretrained`` and ``generate``/``eval``
``--checkpoint`` read: config.json, model.safetensors and the run's tokenizer.json.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a training checkpoint (sharded or not) as a save_pretrained folder",
        description="Gather a training checkpoint into config.json + model.safetensors (+ tokenizer.json). "
        "Sharded FSDP2 checkpoints are resharded into one process; no GPU or process group is needed.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a run folder (its last checkpoint is used) or a checkpoints/step-NNNNNN folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.set_defaults(func=run)


def resolve_step_folder(path: Path) -> Path | None:
    from transmamba.training.checkpoint import find_checkpoint, is_complete

    if not path.is_dir():
        return None
    if is_complete(path):
        return path
    return find_checkpoint(path) if path.is_dir() else None


def run(args: argparse.Namespace) -> int:
    from transmamba.training.sharded_checkpoint import export_pretrained, is_sharded_checkpoint

    src = resolve_step_folder(Path(args.checkpoint))
    if src is None:
        from transmamba.errors import UsageError

        raise UsageError(f"--checkpoint {args.checkpoint} is neither a run folder with a checkpoint nor a "
                         "checkpoint folder; pass `transmamba train`'s --out-dir or one of its step folders")
    out = Path(args.out)
    if out.resolve() == src.resolve():
        from transmamba.errors import UsageError

        raise UsageError("--out must differ from the checkpoint folder")
    if is_sharded_checkpoint(src):
        export_pretrained(src, out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
    print(f"exported {src} -> {out}")
    return 0
