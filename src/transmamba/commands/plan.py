"""`transmamba plan`: per-layer TransPoints that fit a decode-memory budget and lose least on held-out text.

    transmamba plan --checkpoint runs/distill --budget 2MiB --context 8192
    transmamba plan --checkpoint runs/transmamba-tiny --budget 1.5MiB --context 4096 \
        --eval-len 256 --out plan/

Walks greedily from all-attention (every P = --context) to all-SSM (every P = 0), lowering one layer one
notch (halving P) at a time where it costs least held-out loss per byte of peak decode cache saved, and
prints the path as a table (TransPoints, peak cache per sequence at --context, held-out loss, decode
tokens/s) with the plan for --budget marked; --out also writes plan.json and tradeoff.png. Losses are
measured on rows of --eval-len tokens with each P scaled by eval-len / context (see
`transmamba.conversion.planner`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transmamba.commands._args import int_arg
from transmamba.errors import UsageError, one_line


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="choose TransPoints for a memory budget (loss vs memory table)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a TransMamba run folder or checkpoint folder (with tokenizer.json)")
    p.add_argument("--budget", required=True, metavar="SIZE",
                   help="peak decode cache per sequence, e.g. 2GiB, 512MiB, 1.5GB or bytes")
    p.add_argument("--context", type=int_arg(1, 2**24), default=8192, metavar="TOKENS",
                   help="context length the budget is for (default: 8192)")
    p.add_argument("--eval-len", dest="eval_len", type=int_arg(2), default=None, metavar="TOKENS",
                   help="held-out row length for the loss (default: the model's max_seq_len, at most 512)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="held-out text (default: the bundled Shakespeare's validation split)")
    p.add_argument("--eval-batches", dest="eval_batches", type=int_arg(1), default=4, metavar="N",
                   help="validation batches of 8 rows per evaluation (default: 4)")
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                   help="measure batch-1 decode tokens/s at each point of the path (default: on)")
    p.add_argument("--out", default=None, metavar="DIR", help="write plan.json and tradeoff.png here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transmamba.conversion import ConversionError
    from transmamba.conversion.planner import choose, parse_bytes, plan, plot_path
    from transmamba.conversion.teacher import load_teacher
    from transmamba.data.packing import iter_eval_batches, prepare_text_data
    from transmamba.data.text import DataError
    from transmamba.inference.cache import format_bytes

    try:
        budget = parse_bytes(args.budget)
        if args.context < 1:
            raise ConversionError(f"--context must be >= 1, got {args.context}")
        model, tok = load_teacher(args.checkpoint)
        if tok is None:
            raise ConversionError(f"{args.checkpoint}: no tokenizer.json beside the weights")
        eval_len = args.eval_len or min(model.config.max_seq_len, 512)
        if not 2 <= eval_len <= model.config.max_seq_len:
            raise ConversionError(f"--eval-len must be in [2, {model.config.max_seq_len}], got {eval_len}")
        data = prepare_text_data(args.data, seq_len=eval_len, vocab_size=model.config.vocab_size,
                                 tokenizer_path=str(tok))
        batches = list(iter_eval_batches(data.val, 8, args.eval_batches))
        path = plan(model, batches, context=args.context, eval_len=eval_len,
                    speed_prompt=eval_len if args.speed else None)
        chosen = choose(path, budget)
    except (ConversionError, DataError, FileNotFoundError, ValueError) as err:
        raise UsageError(one_line(err)) from None
    print(f"peak decode cache per sequence at {args.context} tokens; loss on {len(batches)} held-out batches "
          f"of {eval_len}-token rows; budget {format_bytes(budget)}")
    print(f"{'':2}{'TransPoints':<40} {'peak cache':>12} {'loss':>8} {'tok/s':>8}")
    for pt in path:
        mark = "* " if pt is chosen else "  "
        speed = f"{pt.decode_tok_s:8.1f}" if pt.decode_tok_s is not None else f"{'-':>8}"
        print(f"{mark}{str(pt.transpoints):<40} {format_bytes(pt.peak_bytes):>12} {pt.val_loss:8.4f} {speed}")
    print(f"plan: --transpoints '{json.dumps(chosen.transpoints)}' (peak {format_bytes(chosen.peak_bytes)}, "
          f"loss {chosen.val_loss:.4f})")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = [vars(p) for p in path]
        (out / "plan.json").write_text(json.dumps({"context": args.context, "eval_len": eval_len,
                                                   "budget": budget, "chosen": vars(chosen), "path": rows},
                                                  indent=2) + "\n")
        plot_path(path, out / "tradeoff.png", chosen=chosen,
                  title=f"{args.checkpoint} at {args.context} tokens")
        print(f"wrote {out / 'plan.json'} and {out / 'tradeoff.png'}")
    return 0
