"""`transmamba generate`: load a checkpoint and its tokenizer, stream a continuation of a prompt."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from transmamba.commands._args import check_device, checkpoint_arg, float_arg, int_arg, set_schedule
from transmamba.errors import UsageError, one_line

EOS = "<|endoftext|>"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a trained checkpoint",
        description="Load a checkpoint folder (config.json, model.safetensors and the tokenizer.json the "
        "trainer saves beside them), then print the prompt and stream the continuation token by token.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="checkpoint folder with config.json, model.safetensors and tokenizer.json, or a "
                   "`transmamba train` run folder (its last checkpoint is used)")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="text to continue")
    p.add_argument("--max-new-tokens", type=int_arg(0), default=64, metavar="N",
                   help="most tokens to generate; prompt + N must fit the model's max_seq_len (default: 64)")
    p.add_argument("--temperature", type=float_arg(0, lo_open=True), default=1.0,
                   help="softmax temperature for sampling, > 0; lower is more deterministic, --greedy for "
                   "argmax (default: 1.0)")
    p.add_argument("--top-k", type=int_arg(1), default=None, metavar="K",
                   help="sample only among the K most likely tokens (default: no limit)")
    p.add_argument("--top-p", type=float_arg(0, 1, lo_open=True), default=None, metavar="P",
                   help="nucleus sampling: sample among the most likely tokens whose mass reaches P "
                   "(default: no limit)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (no sampling)")
    p.add_argument("--seed", type=int_arg(0, 2**63 - 1), default=None,
                   help="random seed for sampling (default: unseeded)")
    p.add_argument("--no-stop", action="store_true",
                   help=f"do not stop at the tokenizer's end-of-text token {EOS}")
    p.add_argument("--transpoints", default=None, metavar="SCHEDULE",
                   help="TransMamba models: decode with another TransPoint schedule, a name V1..V9 (scaled "
                   "like the checkpoint's) or comma-separated ints, one per T layer (default: as trained)")
    p.add_argument("--device", default="cpu",
                   help="torch device to run on: cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto",
                   help="decode through CUDA graphs of the static decode step: 'auto' uses them on a CUDA "
                   "device when the model allows it (no MoE layers; otherwise eager with a warning), 'on' "
                   "requires them, 'off' never (default: auto; CPU runs are always eager)")
    p.set_defaults(func=run)


def load_tokenizer(directory: Path):
    """tokenizers.Tokenizer from DIR/tokenizer.json, with a clear error when it is absent."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise UsageError(
            f"no tokenizer at {path}; the trainer saves tokenizer.json beside the weights: copy the "
            "tokenizer used for training there (HF `tokenizers` JSON format)"
        )
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the tokenizers library raises its own exception type
        raise UsageError(f"{path} is not a valid tokenizer.json ({one_line(err)[:200]})") from None


class TextStreamer:
    """Prints text as tokens arrive: decodes all tokens so far and writes the new suffix, so multi-byte
    characters split across byte-level tokens come out whole."""

    def __init__(self, tokenizer, out=None):
        self.tokenizer = tokenizer
        self.out = out or sys.stdout
        self.ids: list[int] = []
        self.printed = ""

    def __call__(self, tokens: torch.Tensor, active: torch.Tensor) -> None:
        if not bool(active[0]):
            return
        self.ids.append(int(tokens[0]))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        self.out.write(text[len(self.printed):])
        self.out.flush()
        self.printed = text


def run(args: argparse.Namespace) -> int:
    from transmamba.models.lm import CausalLM

    check_device(args.device)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    directory = checkpoint_arg(args.checkpoint)
    tokenizer = load_tokenizer(directory)
    try:
        model = CausalLM.from_pretrained(directory, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"cannot load {directory}: {one_line(err)}") from None
    if args.transpoints:
        set_schedule(model, args.transpoints)
    if args.cuda_graph == "on":
        from transmamba.inference.static_decode import graph_supported

        ok, why = graph_supported(model)
        if not ok:
            raise UsageError(f"--cuda-graph on is not possible: {why}; use --cuda-graph auto")
    ids = tokenizer.encode(args.prompt).ids
    if not ids:
        eos = tokenizer.token_to_id(EOS)
        if eos is None:
            raise UsageError("the prompt encodes to no tokens; give a non-empty --prompt")
        ids = [eos]
    if max(ids) >= model.config.vocab_size:
        raise UsageError(f"the tokenizer produced id {max(ids)} but the model's vocabulary has "
                         f"{model.config.vocab_size} entries; is this the checkpoint's own tokenizer?")
    limit = model.config.max_seq_len
    if len(ids) + args.max_new_tokens > limit:
        room = limit - len(ids)
        fix = f"use --max-new-tokens {room} or less" if room > 0 else "shorten the prompt"
        raise UsageError(f"the prompt ({len(ids)} tokens) + --max-new-tokens {args.max_new_tokens} exceeds "
                         f"the model's max_seq_len {limit}; {fix}")
    stop = None if args.no_stop else tokenizer.token_to_id(EOS)
    streamer = TextStreamer(tokenizer)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    model.generate(
        [ids], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        greedy=args.greedy, stop_tokens=stop, seed=args.seed, streamer=streamer,
        cuda_graph=args.cuda_graph,
    )
    sys.stdout.write("\n")
    return 0

