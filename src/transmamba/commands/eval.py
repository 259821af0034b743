"""`transmamba eval`: score a saved checkpoint on recall tasks or on held-out text.

    transmamba eval phonebook      --checkpoint DIR [--lengths 128 256 512] [--generate]
    transmamba eval mqar           --checkpoint DIR [--lengths ...] [--layout zoology [--n-pairs N]]
    transmamba eval selective-copy --checkpoint DIR [--lengths ...]
    transmamba eval perplexity     --checkpoint DIR --data PATH [--seq-len 256]

Recall tasks are generated fresh from `--seed` at each length (token ids, no tokenizer; the checkpoint's
vocabulary must be at least 18 + symbols, see `transmamba.data.synthetic`). Perplexity tokenizes `--data`
with the `tokenizer.json` saved in the checkpoint folder (or `--tokenizer`). `--transpoints` swaps the
TransMamba schedule before scoring (the paper's inference-time swap). `--json FILE` writes the results.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from transmamba.commands._args import check_device, checkpoint_arg, float_arg, int_arg
from transmamba.errors import UsageError

RECALL_TASKS = ("phonebook", "mqar", "selective-copy")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="folder written by save_pretrained (config.json + weights), or a `transmamba train` "
                        "run folder (its last checkpoint is used)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda if available, else cpu) | cpu | cuda | cuda:N")
    p.add_argument("--transpoints", default=None, metavar="SCHEDULE",
                   help="swap the TransMamba schedule before scoring: a name V1..V9 (scaled like the "
                        "checkpoint's own) or comma-separated TransPoints, e.g. 0,64,128,256")
    p.add_argument("--batch-size", type=int_arg(1), default=32, help="rows per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results to this JSON file")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="score a checkpoint: recall tasks (PhoneBook, MQAR, selective copy) or perplexity",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="eval_task", metavar="TASK")
    for task in RECALL_TASKS:
        p = tasks.add_parser(task, help=f"accuracy on {task} by context length",
                             description=f"Teacher-forced accuracy of a checkpoint on fresh {task} rows "
                                         "at each context length (chance level printed beside it).")
        _common(p)
        p.add_argument("--lengths", type=int_arg(2), nargs="+", default=[128, 256, 512],
                       help="context lengths in tokens, each at most the model's max_seq_len; each gets its "
                            "own batch (default: 128 256 512)")
        p.add_argument("--n-rows", type=int_arg(1, 1_000_000), default=256,
                       help="rows scored per length (default 256)")
        p.add_argument("--seed", type=int_arg(0, 2**31), default=1234, help="seed of the generated rows")
        if task == "phonebook":
            p.add_argument("--name-len", type=int_arg(1, 64), default=3, help="symbols per name")
            p.add_argument("--number-len", type=int_arg(1, 64), default=4, help="digits per phone number")
            p.add_argument("--generate", action="store_true",
                           help="also greedy-generate each number (the decode path) and report exact match")
        if task == "selective-copy":
            p.add_argument("--n-tokens", type=int_arg(1, 4096), default=8, help="data tokens to copy per row")
        if task == "mqar":
            p.add_argument("--layout", choices=("library", "zoology"), default="library",
                           help="library: `transmamba.data.synthetic.mqar` rows; zoology: Zoology's MQAR "
                                "(`transmamba.eval.mqar`: power-law query gaps, answers not in the input)")
            p.add_argument("--n-pairs", type=int_arg(1, 4096), default=None,
                           help="zoology layout: key-value pairs per row (default: Zoology's for the "
                                "length, 64:4 128:8 256:16 512:64, else length/8)")
        p.set_defaults(func=_run_recall)
    p = tasks.add_parser("perplexity", help="loss and perplexity on a text corpus",
                         description="Mean next-token loss over non-overlapping windows of --data.")
    _common(p)
    p.add_argument("--data", required=True, metavar="PATH",
                   help="text file, folder of .txt/.md, .jsonl or .parquet, or 'shakespeare' (bundled)")
    p.add_argument("--split", choices=("all", "val", "train"), default="all",
                   help="score all documents, or the train/val split made as `transmamba train` makes it")
    p.add_argument("--val-fraction", type=float_arg(0, 1, lo_open=True, hi_open=True), default=0.05,
                   help="held-out fraction for --split")
    p.add_argument("--split-seed", type=int_arg(0), default=0, help="seed of the document split")
    p.add_argument("--tokenizer", default=None, metavar="FILE",
                   help="tokenizer.json (default: the one in the checkpoint folder)")
    p.add_argument("--seq-len", type=int_arg(2), default=256,
                   help="tokens per window (at most the model's max_seq_len)")
    p.add_argument("--max-windows", type=int_arg(1), default=None, help="score at most this many windows")
    p.set_defaults(func=_run_perplexity)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def _device(name: str):
    import torch

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def checkpoint_dir(path) -> Path:
    """A folder with config.json, or a `transmamba train` run folder (its `last` checkpoint)."""
    return checkpoint_arg(path)


def load_model(args):
    """The checkpoint's CausalLM in eval mode on the chosen device, schedule swapped if asked."""
    from transmamba.commands._args import set_schedule
    from transmamba.models.lm import CausalLM

    device = _device(args.device)
    ckpt = checkpoint_dir(args.checkpoint)
    model = CausalLM.from_pretrained(str(ckpt)).to(device).eval()
    if args.transpoints:
        set_schedule(model, args.transpoints)
    return model


def _check_length(model, length: int, flag: str) -> None:
    limit = model.config.max_seq_len
    if length > limit:
        raise UsageError(f"{flag} {length} is longer than the model's max_seq_len={limit}; "
                         f"use {limit} or less")


def _emit(args, result: dict) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def _run_recall(args) -> int:
    from transmamba.eval.recall import evaluate_lengths

    model = load_model(args)
    for length in args.lengths:
        _check_length(model, length, "--lengths")
    if getattr(args, "layout", "library") == "zoology":
        return _run_zoology_mqar(args, model)
    kw = {}
    if args.eval_task == "phonebook":
        kw = {"name_len": args.name_len, "number_len": args.number_len}
    elif args.eval_task == "selective-copy":
        kw = {"n_tokens": args.n_tokens}
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(args.lengths), desc=args.eval_task, unit="length", dynamic_ncols=True,
                   leave=False)
    rows = []
    try:
        for i, length in enumerate(args.lengths):  # one call per length: seed + i as evaluate_lengths does
            try:
                rows += evaluate_lengths(model, args.eval_task, [length], n_rows=args.n_rows,
                                         seed=args.seed + i, batch_size=args.batch_size,
                                         generate=getattr(args, "generate", False), **kw)
            except ValueError as err:  # a length or task size the generator cannot lay out
                raise UsageError(f"{args.eval_task} at length {length}: {err}") from None
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    warn_if_chance(args.eval_task, rows)
    print(f"{args.eval_task}  checkpoint={args.checkpoint}  transpoints={_transpoints(model)}")
    head = f"{'length':>7} {'token_acc':>10} {'answer_acc':>11} {'chance':>8}"
    if getattr(args, "generate", False):
        head += f" {'gen_exact':>10}"
    print(head)
    for r in rows:
        line = (f"{r['length']:>7} {r['token_accuracy']:>10.4f} {r['answer_accuracy']:>11.4f} "
                f"{r['chance']['token_accuracy']:>8.4f}")
        if "generate_exact_match" in r:
            line += f" {r['generate_exact_match']:>10.4f}"
        print(line)
    if args.eval_task == "phonebook":
        print("exact match by where the answer sits in the book (start -> end):")
        for r in rows:
            cells = "  ".join(
                f"{b['from']:.2f}-{b['to']:.2f}: "
                + ("  -  " if b["accuracy"] is None else f"{b['accuracy']:.3f}")
                for b in r["by_book_position"]
            )
            print(f"{r['length']:>7}  {cells}")
    _emit(args, {"task": args.eval_task, "checkpoint": str(args.checkpoint),
                 "transpoints": _transpoints(model), "results": rows})
    return 0


def warn_if_chance(task: str, rows: list[dict]) -> bool:
    """Warn when every length scores within twice the chance token accuracy: the numbers then say the model
    was not trained on this task (train one with `transmamba train --task ...`), not how well it recalls."""
    if not rows:
        return False
    ratio = max(r["token_accuracy"] / max(r["chance"]["token_accuracy"], 1e-9) for r in rows)
    if ratio < 2.0:
        warnings.warn(
            f"{task}: token accuracy is within 2x of chance at every length (best {ratio:.2f}x chance); this "
            f"checkpoint was probably not trained on {task} (train one: transmamba train --task {task})",
            stacklevel=2,
        )
        return True
    return False


def _run_zoology_mqar(args, model) -> int:
    from transmamba.eval.mqar import check_mqar, evaluate_lengths, zoology_pairs

    for length in args.lengths:
        try:
            check_mqar(length, args.n_pairs or zoology_pairs(length), model.config.vocab_size)
        except ValueError as err:
            raise UsageError(f"--layout zoology: {err}") from None
    rows = evaluate_lengths(model, args.lengths, n_pairs=args.n_pairs, n_rows=args.n_rows, seed=args.seed,
                            batch_size=args.batch_size)
    print(f"mqar (zoology layout)  checkpoint={args.checkpoint}  transpoints={_transpoints(model)}")
    print(f"{'length':>7} {'pairs':>6} {'accuracy':>9} {'loss':>8} {'chance':>8}")
    for r in rows:
        print(f"{r['length']:>7} {r['n_pairs']:>6} {r['accuracy']:>9.4f} {r['loss']:>8.3f} "
              f"{r['chance']:>8.5f}")
    _emit(args, {"task": "mqar", "layout": "zoology", "checkpoint": str(args.checkpoint),
                 "transpoints": _transpoints(model), "results": rows})
    return 0


def _transpoints(model):
    """The model's TransPoints now (one per `T` layer), or None for a model without TransMamba layers."""
    cfg = model.config
    if not getattr(cfg, "n_transmamba", 0):
        return None
    return list(cfg.resolved_transpoints())


def _run_perplexity(args) -> int:
    import numpy as np
    import torch

    from transmamba.data.text import load_documents, train_val_split
    from transmamba.data.tokenizer import TextTokenizer, encode_documents
    from transmamba.eval.perplexity import perplexity

    tok_path = Path(args.tokenizer) if args.tokenizer else checkpoint_dir(args.checkpoint) / "tokenizer.json"
    if not tok_path.is_file():
        raise UsageError(f"no tokenizer at {tok_path}; pass --tokenizer FILE")
    try:
        tok = TextTokenizer.from_file(tok_path)
    except Exception as err:  # the tokenizers library raises its own exception type
        raise UsageError(f"{tok_path} is not a valid tokenizer.json ({str(err)[:200]})") from None
    docs = load_documents(args.data)
    if args.split != "all":
        train, val = train_val_split(docs, args.val_fraction, seed=args.split_seed)
        docs = val if args.split == "val" else train
    arrays = encode_documents(tok, docs)
    ids = np.concatenate([np.append(a, tok.eos_id) for a in arrays]).astype(np.int64)
    model = load_model(args)
    if tok.vocab_size > model.config.vocab_size:
        raise UsageError(f"the tokenizer has {tok.vocab_size} ids, the model only {model.config.vocab_size}; "
                         "pass the checkpoint's own --tokenizer")
    _check_length(model, args.seq_len, "--seq-len")
    if len(ids) < args.seq_len:
        raise UsageError(f"--data {args.data} has {len(ids)} tokens, fewer than one window of --seq-len "
                         f"{args.seq_len}; give more text or a smaller --seq-len")
    res = perplexity(model, torch.from_numpy(ids), seq_len=args.seq_len, batch_size=args.batch_size,
                     max_windows=args.max_windows, progress=not args.no_progress)
    res.update({"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
                "documents": len(docs), "transpoints": _transpoints(model)})
    print(f"loss {res['loss']:.4f}  perplexity {res['perplexity']:.3f}  "
          f"bits/token {res['bits_per_token']:.4f}  "
          f"({res['tokens']} tokens, {res['windows']} windows of {res['seq_len']})")
    _emit(args, res)
    return 0
