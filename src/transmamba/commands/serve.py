"""`transmamba serve`: an OpenAI-compatible HTTP server (completions, chat completions, streaming) for a
checkpoint or a random-weight preset. The server itself is `transmamba.serving`; this module only parses."""

from __future__ import annotations

import argparse
from pathlib import Path

DTYPES = ("fp32", "bf16", "fp16")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve /v1/completions, /v1/chat/completions (both with \"stream\": true for server-sent "
        "events), /v1/models and /health on FastAPI + uvicorn (pip install 'transmamba[serve]'). Concurrent "
        "requests are decoded together in one batch. Requests may carry a TransPoint schedule "
        "(\"transpoints\": \"V9\" or one int per T layer) and a decode-memory cap (\"max_kv_bytes\"), which "
        "lowers the TransPoints until the request's state fits.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR",
                     help="checkpoint folder (config.json, model.safetensors, tokenizer.json)")
    src.add_argument("--preset", metavar="NAME",
                     help="serve a preset with random weights and a byte-level tokenizer (to try the API)")
    p.add_argument("--tokenizer", metavar="FILE", default=None,
                   help="tokenizer.json to use (default: the checkpoint's; bytes for --preset)")
    p.add_argument("--model-name", default=None,
                   help="the name clients send as \"model\" (default: the folder or preset name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights' dtype (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--transpoints", default=None, metavar="SCHEDULE",
                   help="TransMamba models: default schedule, a name V1..V9 or comma-separated ints "
                   "(default: as trained)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="most requests decoded together in one step (default: 16)")
    p.add_argument("--max-tokens", type=int, default=512, metavar="N",
                   help="largest max_tokens a request may ask for (default: 512)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, metavar="N",
                   help="longest prompt accepted, in tokens (default: 2048)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="largest request body accepted (default: 1048576)")
    p.add_argument("--max-kv-bytes", type=int, default=None, metavar="N",
                   help="cap on one request's decode-state bytes; TransPoints are lowered to fit "
                   "(default: no cap)")
    p.add_argument("--cuda-graph", choices=("on", "off"), default="on",
                   help="CUDA devices: replay decode steps from CUDA graphs (default: on)")
    p.add_argument("--seed", type=int, default=0, help="seeds the requests that give no seed (default: 0)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: info)")
    p.set_defaults(func=run)


def load_model(args: argparse.Namespace):
    """-> (model, tokenizer, name) from the parsed flags; SystemExit with one line on a bad flag."""
    import torch

    from transmamba.models.lm import CausalLM
    from transmamba.serving.tokenizer import load_tokenizer

    dtype_name = args.dtype or ("bf16" if str(args.device).startswith("cuda") else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    tok_path = args.tokenizer
    if args.checkpoint:
        directory = Path(args.checkpoint)
        if not directory.is_dir():
            raise SystemExit(f"serve: checkpoint folder {directory} does not exist")
        try:
            model = CausalLM.from_pretrained(directory, device=args.device, dtype=dtype)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"serve: cannot load {directory}: {err}") from None
        if tok_path is None:
            tok_path = directory / "tokenizer.json"
        name = args.model_name or directory.resolve().name
    else:
        try:
            model = CausalLM.from_preset(args.preset).to(device=args.device, dtype=dtype)
        except (KeyError, ValueError) as err:
            raise SystemExit(f"serve: --preset {args.preset!r}: {err}") from None
        name = args.model_name or args.preset
    if args.transpoints:
        from transmamba.commands._args import set_schedule
        from transmamba.errors import UsageError

        try:
            set_schedule(model, args.transpoints)
        except UsageError as err:
            raise SystemExit(f"serve: {err}") from None
    try:
        tokenizer = load_tokenizer(tok_path, model.config.vocab_size)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"serve: {err}") from None
    return model, tokenizer, name


def run(args: argparse.Namespace) -> int:
    for flag in ("max_batch", "max_tokens", "max_prompt_tokens", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"serve: --{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.max_kv_bytes is not None and args.max_kv_bytes < 1:
        raise SystemExit(f"serve: --max-kv-bytes must be >= 1, got {args.max_kv_bytes}")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise SystemExit("serve: needs FastAPI and uvicorn: pip install 'transmamba[serve]'") from None
    from transmamba.serving import Engine, Limits, run_server

    model, tokenizer, name = load_model(args)
    limits = Limits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
                    max_body_bytes=args.max_body_bytes, max_kv_bytes=args.max_kv_bytes,
                    default_max_tokens=min(64, args.max_tokens))
    engine = Engine(model, tokenizer, name=name, limits=limits, max_batch=args.max_batch,
                    cuda_graph=args.cuda_graph == "on", seed=args.seed)
    run_server(engine, args.host, args.port, log_level=args.log_level)
    return 0
