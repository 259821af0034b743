"""`transmamba demo`: train a small TransMamba on the bundled Shakespeare, then watch it decode.

    transmamba demo                      # 2-3 minutes on 2 CPU cores: tokenizer, training, val loss, sample
    transmamba demo --max_steps 60       # any `transmamba train` option works here too
    transmamba demo --compare --report docs/demo-results.md
                                         # also a same-size Transformer and Mamba-2, trained the same way

What it shows:
1. a byte-level BPE tokenizer trained on 36 plays (2 held out for validation, by play);
2. training `transmamba-tiny` (4 TransMamba layers, d_model 64) with TransPoints [0, 32, 64, 96]:
   layer 0 is pure Mamba-2, the others use attention for their first 32 / 64 / 96 tokens;
3. validation loss and bits per byte on the held-out plays, and a sample;
4. the Memory Converter at work while decoding: each TransMamba layer keeps a KV cache of (B, x, dt)
   for its tokens before P; at position P it folds that cache into its SSM state and frees it. The demo
   prints each conversion (token position, layer, bytes before and after) and the cache per layer.

With --compare, `transformer-tiny` and `mamba2-tiny` (same d_model, layer count, tokenizer, tokens, steps,
learning rate and seed) are trained too, and a Markdown table plus a PNG of the curves are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from transmamba.commands._args import float_arg, int_arg
from transmamba.commands.train import add_config_arguments, add_parser, config_from_args, report_errors
from transmamba.training.config import TrainConfig

# The demo's own defaults (any flag overrides them): small enough for ~5 minutes on 2 CPU cores.
DEMO_DEFAULTS = dict(
    preset="transmamba-tiny",
    vocab_size=2048,
    seq_len=128,
    batch_size=16,
    max_steps=500,
    lr=6e-3,
    warmup_steps=40,
    eval_every=100,
    eval_batches=16,
    out_dir="runs/demo",
    overwrite=True,
)
DEMO_TRANSPOINTS = [0, 32, 64, 96]
COMPARE_PRESETS = ("transformer-tiny", "mamba2-tiny")


def register(subparsers) -> None:
    parser = add_parser(
        subparsers, "demo",
        help="train a small TransMamba on Shakespeare, sample from it, show the KV -> SSM state conversion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo = parser.add_argument_group("demo options")
    demo.add_argument("--prompt", default="KING LEAR\n", help="text to continue (default: 'KING LEAR\\n')")
    demo.add_argument("--new-tokens", type=int_arg(1, 100_000), default=150,
                      help="tokens to generate (default: 150, enough to pass every TransPoint)")
    demo.add_argument("--temperature", type=float_arg(0, lo_open=True), default=0.8,
                      help="sampling temperature (default: 0.8)")
    demo.add_argument("--top-k", type=int_arg(1), default=40, help="top-k sampling (default: 40)")
    demo.add_argument("--compare", action="store_true",
                      help=f"also train {' and '.join(COMPARE_PRESETS)} the same way and compare")
    demo.add_argument("--report", default=None, metavar="FILE.md",
                      help="with --compare: write the comparison table here, with the PNG beside it "
                      "(default: <out_dir>/compare.md)")
    add_config_arguments(parser)
    for action in parser._actions:  # show the demo's defaults in --help
        if action.dest in DEMO_DEFAULTS and action.help:
            base = action.help.rsplit(" (default:", 1)[0]
            action.help = f"{base} (demo default: {DEMO_DEFAULTS[action.dest]})"
    parser.set_defaults(func=run)


def demo_config(args: argparse.Namespace) -> TrainConfig:
    """DEMO_DEFAULTS, then the YAML file and flags on top (like `train`)."""
    cfg = config_from_args(args, DEMO_DEFAULTS)
    if cfg.preset.startswith("transmamba") and "transpoints" not in cfg.model:
        cfg.model = {**cfg.model, "transpoints": DEMO_TRANSPOINTS}
    return cfg


# ------------------------------------------------------------------------------------------- decoding


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


@torch.no_grad()
def decode_with_events(model, tokenizer, prompt: str, new_tokens: int, *, temperature: float,
                       top_k: int | None, seed: int) -> dict:
    """Sample ``new_tokens`` after ``prompt`` with the library's `generate`, watching the decode cache after
    the prefill and after every step (`on_step`) to record each KV -> SSM conversion.

    Returns {"text", "events": [{position, layer, transpoint, kv_positions, bytes_before, bytes_after}],
    "layers": [{layer, kind, transpoint, bytes_at_start, bytes_peak, bytes_end}], "cache_start", "cache_end"}.
    """
    from transmamba.inference.generate import generate

    model.eval()
    limit = model.config.max_seq_len
    ids = (tokenizer.encode(prompt) or [tokenizer.eos_id])[-(limit - 1):]  # room for a new token
    new_tokens = max(1, min(new_tokens, limit - len(ids)))
    kinds = list(model.kinds)
    tm_layers = [i for i, k in enumerate(kinds) if k == "transmamba"]
    seen: dict = {}  # what the observer has seen so far

    def watch(cache) -> None:
        """After the prefill (position len(ids) - 1) and after each step (the position it consumed)."""
        now = cache.layer_nbytes()
        if not seen:  # the prefill: compare against a fresh cache of the same size
            fresh = model.init_cache(1, len(ids) + new_tokens)
            seen.update(cache=cache, start=fresh.layer_nbytes(), prev=fresh.layer_nbytes(),
                        peak=list(fresh.layer_nbytes()),
                        was={i: bool(fresh.states[i].converted.all()) for i in tm_layers}, events=[])
        position = int(cache.seqlen_offset[0]) - 1
        for i in tm_layers:
            seen["peak"][i] = max(seen["peak"][i], now[i])
            if not seen["was"][i] and bool(cache.states[i].converted.all()):
                seen["was"][i] = True
                P = int(model.mixer(i).transpoint)
                seen["events"].append({"position": position, "prefill": position < len(ids), "layer": i,
                                       "transpoint": P, "kv_positions": P, "bytes_before": seen["prev"][i],
                                       "bytes_after": now[i]})
        seen["prev"] = now

    # cuda_graph="off": the eager step frees each layer's KV cache as it converts (a CUDA-graph workspace
    # keeps its buffers for the next call), which is what the report shows
    out = generate(model, [ids], new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                   cuda_graph="off", on_step=watch)[0][len(ids):]
    cache, start_bytes, peak, events = seen["cache"], seen["start"], seen["peak"], seen["events"]
    end_bytes = cache.layer_nbytes()
    transformer_bytes = None
    try:  # what a same-width Transformer would hold (analytic; fp32 like this cache)
        from transmamba.inference.cache import cache_bytes_per_sequence
        from transmamba.models.presets import get_preset

        tf = get_preset("transformer-tiny", vocab_size=model.config.vocab_size, d_model=model.config.d_model)
        dtype = next(model.parameters()).dtype
        transformer_bytes = [cache_bytes_per_sequence(tf, len(ids) + new_tokens, dtype),
                             cache_bytes_per_sequence(tf, 10_000, dtype)]
    except Exception:
        pass
    return {
        "prompt": prompt,
        "text": tokenizer.decode(out),
        "events": events,
        "layers": [{"layer": i, "kind": kinds[i],
                    "transpoint": int(model.mixer(i).transpoint) if kinds[i] == "transmamba" else None,
                    "bytes_at_start": start_bytes[i], "bytes_peak": peak[i], "bytes_end": end_bytes[i]}
                   for i in range(len(kinds)) if cache.states[i] is not None],
        "cache_peak": sum(peak[i] for i in range(len(kinds)) if cache.states[i] is not None),
        "cache_end": cache.nbytes(),
        "tokens": len(ids) + new_tokens,
        "transformer_bytes": transformer_bytes,
    }


def print_decode_report(dec: dict) -> None:
    print("\n== sample (prompt, then the model) ==")
    print(dec["prompt"] + dec["text"])
    print("\n== TransMamba decoding: KV cache -> SSM state at each layer's TransPoint ==")
    for e in dec["events"]:
        when = f"prompt ({e['position'] + 1} tokens)" if e["prefill"] else f"token {e['position']:>3}"
        print(f"  {when}: layer {e['layer']} (P={e['transpoint']}) folded its KV cache of "
              f"{e['kv_positions']} positions into the SSM state: {_kb(e['bytes_before'])} -> "
              f"{_kb(e['bytes_after'])}")
    if not dec["events"]:
        print("  (no layer reached its TransPoint in this sample; raise --new_tokens)")
    print(f"  {'layer':>5} {'kind':>10} {'P':>5} {'at start':>11} {'peak':>11} {'at end':>11}")
    for row in dec["layers"]:
        p = "-" if row["transpoint"] is None else row["transpoint"]
        print(f"  {row['layer']:>5} {row['kind']:>10} {p:>5} {_kb(row['bytes_at_start']):>11} "
              f"{_kb(row['bytes_peak']):>11} {_kb(row['bytes_end']):>11}")
    print(f"  whole cache: peak {_kb(dec['cache_peak'])}, after {dec['tokens']} tokens "
          f"{_kb(dec['cache_end'])} (constant from here on, at any length)")
    if dec.get("transformer_bytes"):
        n, small, big = dec["tokens"], dec["transformer_bytes"][0], dec["transformer_bytes"][1]
        print(f"  for scale: transformer-tiny (same width and depth) holds {_kb(small)} of KV cache after "
              f"{n} tokens and {big / 2**20:.1f} MiB after 10,000; it grows with every token")


# -------------------------------------------------------------------------------------------- running


def _train(cfg: TrainConfig, label: str):
    from transmamba.training.trainer import Trainer

    print(f"\n== training {label} ({cfg.preset}) ==")
    return Trainer(cfg).fit()


@report_errors
def _run(args: argparse.Namespace) -> int:
    from transmamba.data.tokenizer import TextTokenizer
    from transmamba.models.lm import CausalLM

    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = demo_config(args)
    if cfg.threads == 0:
        cfg.threads = max(1, min(torch.get_num_threads(), 4))
    result = _train(cfg, "TransMamba")
    print(f"\n== result ==\nvalidation loss {result.final_val_loss:.4f} nats/token, "
          f"{result.final_val_bpb:.4f} bits/byte on {result.stats['val_documents']} held-out plays "
          f"after {result.step} steps ({result.tokens:,} tokens); training took {result.wall_s:.0f} s")

    ckpt = result.last_checkpoint
    model = CausalLM.from_pretrained(ckpt)
    tok = TextTokenizer.from_file(ckpt / "tokenizer.json")
    dec = decode_with_events(model, tok, args.prompt, args.new_tokens, temperature=args.temperature,
                             top_k=args.top_k, seed=cfg.seed)
    print_decode_report(dec)
    total = time.perf_counter() - t0
    print(f"\ndemo wall time {total:.0f} s; checkpoint {ckpt} (load with CausalLM.from_pretrained)")

    if args.compare:
        runs = {cfg.preset: (cfg, result)}
        for preset in COMPARE_PRESETS:
            other = dataclasses.replace(cfg, preset=preset, out_dir=f"{cfg.run_dir}-{preset}",
                                        model={k: v for k, v in cfg.model.items() if k != "transpoints"},
                                        tokenizer=str(ckpt / "tokenizer.json"))
            runs[preset] = (other, _train(other, preset))
        report = Path(args.report) if args.report else cfg.run_dir / "compare.md"
        write_comparison(runs, report, demo_seconds=total, decode=dec)
        print(f"\ncomparison written to {report} (plot {report.with_suffix('.png')})")
    return 0


def run(args: argparse.Namespace) -> int:
    return _run(args)


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} thread" + ("s" if n != 1 else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def write_comparison(runs: dict, report: Path, *, demo_seconds: float, decode: dict) -> None:
    """Markdown table of the runs' validation losses plus a PNG of their curves."""
    import shlex
    import sys

    from transmamba.training.metrics import plot_curves

    command = "transmamba demo --compare"
    if sys.argv[1:2] == ["demo"]:  # the exact command line this report came from
        command = "transmamba " + shlex.join(sys.argv[1:])

    report.parent.mkdir(parents=True, exist_ok=True)
    png = report.with_suffix(".png")
    first_cfg, first = next(iter(runs.values()))
    n_val = first.stats.get("val_documents", "?")
    corpus = first_cfg.data or "the bundled Shakespeare plays"
    plot_curves({label: r.run_dir / "metrics.csv" for label, (_, r) in runs.items()}, png,
                title=f"tiny models, same tokens and steps (validation: {n_val} held-out documents)")
    lines = [
        "# Demo results: TransMamba vs. a Transformer and Mamba-2 of the same width and depth",
        "",
        f"Made by `{command}` on {_cpu_name()} ({_threads()}), "
        f"torch {torch.__version__}.",
        "",
        f"Same tokenizer (byte-level BPE, {first_cfg.vocab_size} entries), same data order, "
        f"{first_cfg.max_steps} steps of {first_cfg.batch_size} x {first_cfg.seq_len} tokens, "
        f"lr {first_cfg.lr:g} (warmup {first_cfg.warmup_steps}, cosine), seed {first_cfg.seed}. "
        f"Data: {corpus}; validation: the {n_val} held-out documents "
        f"({first_cfg.eval_batches or 'all'} batches), loss in nats per token and bits per byte.",
        "",
        "| preset | pattern | parameters | val loss | val bits/byte | train time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    from transmamba.models.lm import CausalLM

    for label, (_, r) in runs.items():
        m = CausalLM.from_pretrained(r.last_checkpoint)
        lines.append(f"| `{label}` | `{m.config.pattern}` | {m.num_parameters():,} | "
                     f"{r.final_val_loss:.4f} | {r.final_val_bpb:.4f} | {r.wall_s:.0f} s |")
    tm_cfg = next(iter(runs.values()))[0]
    lines += [
        "",
        f"TransMamba's TransPoints: {tm_cfg.model.get('transpoints')} (one per layer).",
        "",
        f"![validation and training loss]({png.name})",
        "",
        "## Decoding: KV cache to SSM state",
        "",
        "| at token | layer | P | layer cache before | after |",
        "|---:|---:|---:|---:|---:|",
    ]
    for e in decode["events"]:
        when = "prompt" if e["prefill"] else e["position"]
        lines.append(f"| {when} | {e['layer']} | {e['transpoint']} | {_kb(e['bytes_before'])} | "
                     f"{_kb(e['bytes_after'])} |")
    lines += ["", f"Whole demo (tokenizer, TransMamba training, sampling) took {demo_seconds:.0f} s.", "",
              "Raw numbers:", "", "```json",
              json.dumps({label: {"train_s": round(r.wall_s, 1),
                                  "evals_step_loss_bpb": [[e["step"], round(e["val_loss"], 5),
                                                           round(e["val_bpb"], 5)] for e in r.evals]}
                          for label, (_, r) in runs.items()}), "```", ""]
    report.write_text("\n".join(lines))
