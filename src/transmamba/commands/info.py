"""`transmamba info`: list the presets, or describe one (pattern, layer counts, parameters, cache size).

Parameter counts come from building the model on the `meta` device (shapes only, no memory), so even
`jamba-52b` is counted exactly and instantly.
"""

from __future__ import annotations

import argparse
import json

import torch

from transmamba.commands._args import int_arg
from transmamba.errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="list model presets, or describe one",
        description="Without --preset: list every preset with its layer count and description. With "
        "--preset: print its layer pattern, layers by kind, parameter count (counted on the meta device) "
        "and the decode-cache bytes one sequence needs at --context tokens.",
    )
    p.add_argument("--preset", metavar="NAME", help="preset to describe (omit to list all presets)")
    p.add_argument("--context", type=int_arg(0, 2**40), default=8192, metavar="TOKENS",
                   help="context length for the cache-size estimate (default: 8192)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="dtype of the decode states for the cache-size estimate (default: bf16)")
    p.add_argument("--params", action="store_true",
                   help="with the preset list: also count each preset's parameters (slower)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.set_defaults(func=run)


def count_parameters(config) -> dict[str, int]:
    """{"total", "non_embedding", "active"} parameters of CausalLM(config), built on the meta device.

    active = parameters one token uses: the MoE experts count top_k / n_experts of their weights.
    """
    from transmamba.models.lm import CausalLM

    with torch.device("meta"):
        model = CausalLM(config)
    total = model.num_parameters()
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = total - experts + experts * config.top_k // config.n_experts
    return {"total": total, "non_embedding": model.num_parameters(exclude_embeddings=True), "active": active}


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def describe(name: str, context: int, dtype: torch.dtype) -> dict:
    from transmamba.inference.cache import cache_bytes_per_sequence
    from transmamba.models.pattern import count_kinds
    from transmamba.models.presets import get_preset_info

    info = get_preset_info(name)
    cfg = info.config()
    counts = count_parameters(cfg)
    out = {
        "name": name,
        "description": info.description,
        "source": info.source,
        "pattern": cfg.pattern,
        "n_layers": cfg.n_layers,
        "layers_by_kind": count_kinds(cfg.pattern),
        "d_model": cfg.d_model,
        "vocab_size": cfg.vocab_size,
        "parameters": counts["total"],
        "non_embedding_parameters": counts["non_embedding"],
        "active_parameters": counts["active"],
        "nominal_parameters": info.nominal_params,
        "nominal_count_basis": info.count_basis,
        "context": context,
        "cache_bytes_per_sequence": cache_bytes_per_sequence(cfg, context, dtype),
    }
    if cfg.n_transmamba:
        out["transpoints"] = cfg.resolved_transpoints()
    return out


def run(args: argparse.Namespace) -> int:
    from transmamba.inference.cache import format_bytes
    from transmamba.models.presets import get_preset_info, list_presets

    dtype = DTYPES[args.dtype]
    if args.preset is None:
        rows = []
        for name in list_presets():
            info = get_preset_info(name)
            cfg = info.config()
            row = {"name": name, "n_layers": cfg.n_layers, "description": info.description}
            if args.params:
                row["parameters"] = count_parameters(cfg)["total"]
            rows.append(row)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        width = max(len(r["name"]) for r in rows)
        print(f"{len(rows)} presets (`transmamba info --preset NAME` for details):")
        for r in rows:
            params = f"{_human(r['parameters']):>8}  " if "parameters" in r else ""
            print(f"  {r['name']:<{width}}  {r['n_layers']:>3} layers  {params}{r['description']}")
        return 0

    try:
        d = describe(args.preset, args.context, dtype)
    except KeyError as err:
        raise UsageError(str(err.args[0])) from None
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    kinds = ", ".join(f"{n} {k}" for k, n in d["layers_by_kind"].items())
    print(f"preset       {d['name']}")
    print(f"description  {d['description']}")
    if d["source"]:
        print(f"source       {d['source']}")
    print(f"pattern      {d['pattern']}")
    print(f"layers       {d['n_layers']} sub-layers: {kinds}")
    print(f"d_model      {d['d_model']}   vocab {d['vocab_size']}")
    line = f"parameters   {d['parameters']:,} ({_human(d['parameters'])}); non-embedding " \
           f"{d['non_embedding_parameters']:,} ({_human(d['non_embedding_parameters'])})"
    if d["nominal_parameters"]:
        basis = d["nominal_count_basis"]
        counted = d["parameters"] if basis == "total" else d["non_embedding_parameters"]
        dev = 100.0 * (counted / d["nominal_parameters"] - 1.0)
        line += f"; nominal {_human(d['nominal_parameters'])} ({basis.replace('_', '-')}: {dev:+.1f}%)"
    print(line)
    if d["active_parameters"] != d["parameters"]:
        act = d["active_parameters"]
        print(f"active       {act:,} ({_human(act)}) per token (MoE top-k)")
    if "transpoints" in d:
        print(f"transpoints  {d['transpoints']}")
    nbytes = d["cache_bytes_per_sequence"]
    print(f"cache        {nbytes:,} bytes ({format_bytes(nbytes)}) per sequence at {d['context']} tokens "
          f"({args.dtype} states)")
    return 0
