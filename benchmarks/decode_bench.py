"""The `decode` case of benchmarks/run.py: tokens/s of one decode step, eager vs CUDA graph.

For each model (bf16, built on the GPU), context c and batch b:
1. a cache sized for c + a few hundred tokens is filled synthetically (random K/V for the first c positions
   of every attention layer, random conv / SSM states, TransMamba layers in the mode position c puts them
   in: attention with a random (B, x, dt) cache while c < P, else converted with the KV cache freed) and
   every row is put at position c. A decode step's cost does not depend on the values, and this skips a
   128K-token prefill.
2. three ways of running a step are timed, each over n steps (wall clock, synchronised at both ends,
   so host overhead counts): `eager` = `CausalLM.step` (the decode path before the static step),
   `static` = the static step run eagerly (`StaticDecoder(cuda_graph=False)`), `graph` = the static step
   replayed from a CUDA graph (`StaticDecoder(cuda_graph=True)`, after its eager step and capture).
3. bound = bytes a step must move / measured copy bandwidth (`ceilings()`): every weight except the
   embedding table read once (plus b embedding rows), each attention KV row read up to its length plus
   the new entry written, and every fixed-size state read and written once. frac = bound / measured time.
Combinations whose cache would not fit next to the weights in `MEM_LIMIT` bytes are skipped and listed
with the reason.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from typing import Any

import torch

MEM_LIMIT = 74e9  # of the H100's 80 GB: weights + cache + the step's working memory must stay below this
EXTRA = 256  # positions allocated past the context for the timed steps


def decode_models(hybrid_pattern: str) -> list[tuple[str, str, dict]]:
    """(label, preset, overrides): the transmamba-400m-sized models."""
    from transmamba.models.presets import list_presets

    tf = "transformer-400m-eq" if "transformer-400m-eq" in list_presets() else "transformer-400m"
    only = [m for m in os.environ.get("DECODE_BENCH_MODELS", "").split(",") if m]  # a subset, for quick runs
    models = [  # the transformer first (the ratios need it), Mamba-2 last (the least needed if time runs out)
        (tf, tf, {}),
        ("transmamba-400m", "transmamba-400m", {}),
        ("mamba2-hybrid-400m", "mamba2-400m", {"pattern": hybrid_pattern}),
        ("mamba2-400m", "mamba2-400m", {}),
    ]
    return [m for m in models if not only or m[0] in only]


def _build(preset: str, over: dict, max_len: int):
    from transmamba.models import CausalLM, get_preset

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = CausalLM(get_preset(preset, max_seq_len=max_len, **over))
    return model.to(torch.bfloat16).eval()


def fill_cache(model, cache, ctx: int) -> None:
    """Random states as after a ctx-token prompt (see the module docstring)."""
    for kind, state in zip(model.kinds, cache.states):
        if state is None:
            continue
        state.seqlen_offset.fill_(ctx)
        if kind == "attention":
            state.k[:, :ctx].normal_()
            state.v[:, :ctx].normal_()
            continue
        state.conv_state.normal_()
        state.ssm_state.normal_(std=0.1)
        if kind == "transmamba":
            if ctx < state.transpoint:
                state.converted.fill_(False)
                state.kv_B[:, :ctx].normal_()
                state.kv_x[:, :ctx].normal_()
                state.kv_dt[:, :ctx].normal_(std=0.5)
            else:
                state.converted.fill_(True)
                state.kv_B = state.kv_x = state.kv_dt = None


def step_bytes(model, cache, ctx: int) -> dict[str, int]:
    """Bytes one decode step must read + write (see the module docstring), at context ctx."""
    b = cache.batch_size
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "embed.weight")
    weights += b * model.embed.weight.shape[1] * model.embed.weight.element_size()
    kv = fixed = 0
    for kind, state in zip(model.kinds, cache.states):
        if state is None:
            continue
        if kind == "attention":
            row = state.k[0, 0].numel() * state.k.element_size() * 2  # K and V of one position
            kv += b * row * (ctx + 1)
            continue
        fixed += 2 * (state.conv_state.numel() * state.conv_state.element_size()
                      + state.ssm_state.numel() * state.ssm_state.element_size())
        if kind == "transmamba" and state.kv_B is not None:
            per = sum(t[0, 0].numel() * t.element_size() for t in (state.kv_B, state.kv_x, state.kv_dt))
            kv += b * per * (ctx + 1)
    total = weights + kv + fixed
    return {"weight_bytes": weights, "kv_bytes": kv, "state_bytes": fixed, "total_bytes": total}


def _timed(fn, n: int) -> float:
    """Wall-clock ms per call of fn over n calls (synchronised before and after)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n * 1e3


def _reps(first_ms: float, target_ms: float, lo: int = 3) -> int:
    return int(max(lo, min(60, target_ms / max(first_ms, 1e-3))))


def decode_row(model, ctx: int, b: int, bw_GBps: float, target_ms: float) -> dict[str, Any]:
    from transmamba.inference.static_decode import StaticDecoder

    cache = model.init_cache(b, ctx + EXTRA)
    fill_cache(model, cache, ctx)
    row: dict[str, Any] = step_bytes(model, cache, ctx)
    row["bound_ms"] = row["total_bytes"] / (bw_GBps * 1e9) * 1e3
    ids = torch.randint(0, model.config.vocab_size, (b,), device=model.device)
    with torch.no_grad():
        for name in ("eager", "static", "graph"):
            if name == "eager":
                fn = lambda: model.step(ids, cache)  # noqa: E731
            else:  # made here: a decoder reads the rows' positions when it is made
                if name == "graph" and model.device.type != "cuda":
                    continue
                dec = StaticDecoder(model, cache, cuda_graph=name == "graph")
                fn = lambda dec=dec: dec.step(ids)  # noqa: E731
            first = _timed(fn, 1)  # eager: warm-up; graph: the eager step of a new signature
            if name != "eager":
                first = min(first, _timed(fn, 1))  # graph: the capture + first replay
            n = _reps(first, target_ms, lo=2 if name == "eager" else 3)  # the old eager path is slow
            ms = _timed(fn, n)
            row[f"{name}_ms"] = ms
            row[f"{name}_tokens_per_s"] = b / ms * 1e3
            row[f"{name}_frac_of_bound"] = row["bound_ms"] / ms
            row[f"{name}_steps"] = n
        row["positions_used"] = int(cache.seqlen_offset.max()) - ctx
    return row


def _clone_cache(cache):
    import copy

    out = copy.copy(cache)
    out.states = []
    for st in cache.states:
        if st is None:
            out.states.append(None)
            continue
        c = copy.copy(st)
        for name, val in vars(st).items():
            if isinstance(val, torch.Tensor):
                setattr(c, name, val.clone())
        out.states.append(c)
    return out


def check_against_eager(model, ctx: int = 1024, b: int = 2, steps: int = 4) -> float:
    """Max relative difference of the CUDA-graph step's logits from `CausalLM.step`'s over a few steps from
    the same synthetic state (TransMamba: P = ctx converts at the first step, larger P attend)."""
    from transmamba.inference.static_decode import StaticDecoder

    cache = model.init_cache(b, ctx + 16)
    fill_cache(model, cache, ctx)
    ref_cache = _clone_cache(cache)
    dec = StaticDecoder(model, cache, cuda_graph=model.device.type == "cuda")
    worst = 0.0
    gen = torch.Generator(device=model.device).manual_seed(0)
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.randint(0, model.config.vocab_size, (b,), device=model.device, generator=gen)
            ref = model.step(ids, ref_cache).float()
            out = dec.step(ids).float()
            worst = max(worst, float((out - ref).norm() / ref.norm()))
    return worst


def run_decode_case(contexts: list[int], batches: list[int], hybrid_pattern: str, bw_GBps: float,
                    target_ms: float = 150.0, log=print) -> list[dict[str, Any]]:
    from transmamba.inference.cache import cache_bytes_per_sequence

    rows: list[dict[str, Any]] = []
    for label, preset, over in decode_models(hybrid_pattern):
        try:
            model = _build(preset, over, max(contexts) + EXTRA)
        except Exception as err:  # noqa: BLE001
            rows.append({"model": label, "error": repr(err)[:300]})
            traceback.print_exc()
            continue
        wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        try:  # the timed path must compute what the old one does
            check = {"model": label, "check": "graph vs CausalLM.step logits, ctx 1024, b 2, 4 steps",
                     "max_rel_diff": check_against_eager(model)}
        except Exception as err:  # noqa: BLE001
            check = {"model": label, "check": "graph vs CausalLM.step", "error": repr(err)[:300]}
            traceback.print_exc()
        log(json.dumps(check))
        rows.append(check)
        for ctx in contexts:
            for b in batches:
                row: dict[str, Any] = {"model": label, "preset": preset, "context": ctx, "batch": b,
                                       "params": sum(p.numel() for p in model.parameters())}
                need = wbytes + b * cache_bytes_per_sequence(model.config, ctx + EXTRA)
                row["est_mem_GB"] = need / 1e9
                if need > MEM_LIMIT:
                    row["skipped"] = f"weights + cache = {need / 1e9:.1f} GB > {MEM_LIMIT / 1e9:.0f} GB"
                else:
                    try:
                        row.update(decode_row(model, ctx, b, bw_GBps, target_ms))
                    except Exception as err:  # noqa: BLE001 - record and go on
                        row["error"] = repr(err)[:300]
                        traceback.print_exc()
                    row["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
                rows.append(row)
        del model
        torch.cuda.empty_cache()
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """graph tokens/s over the transformer's at the same context and batch (the 8x target)."""
    ref = {(r["context"], r["batch"]): r.get("graph_tokens_per_s") for r in rows
           if r["model"].startswith("transformer") and "graph_tokens_per_s" in r}
    for r in rows:
        base = ref.get((r.get("context"), r.get("batch")))
        if base and "graph_tokens_per_s" in r:
            r["graph_x_transformer"] = r["graph_tokens_per_s"] / base


def plot_decode(rows: list[dict[str, Any]], ax_pair, batches=(1, 16, 64)) -> None:
    """Left: graph tokens/s vs context per model and batch; right: fraction of the bandwidth bound."""
    ax1, ax2 = ax_pair
    styles = {1: ":", 16: "-", 64: "--"}
    models = []
    for r in rows:
        if r.get("model") not in models:
            models.append(r["model"])
    for i, model in enumerate(models):
        color = f"C{i}"
        for b in batches:
            pts = [(r["context"], r["graph_tokens_per_s"], r["graph_frac_of_bound"]) for r in rows
                   if r.get("model") == model and r.get("batch") == b and "graph_tokens_per_s" in r]
            if not pts:
                continue
            xs, ys, fs = zip(*pts)
            ax1.plot(xs, ys, "o" + styles.get(b, "-"), color=color, label=f"{model} b={b}", ms=3)
            ax2.plot(xs, fs, "o" + styles.get(b, "-"), color=color, ms=3)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
    ax1.set_yscale("log")
    ax1.set_ylabel("decode tokens/s (CUDA graph)")
    ax2.set_ylabel("fraction of the bandwidth bound")
    ax2.set_ylim(0, 1.05)
    ax1.legend(fontsize=6, ncol=2)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The docs table: one line per (model, context, batch); skipped / failed combinations say why."""
    head = ("| model | context | batch | eager tok/s | graph tok/s | graph ms | bound ms | graph / bound | "
            "graph x transformer |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "context" not in r:
            continue
        cells = [r["model"], f"{r['context'] // 1024}K", str(r["batch"])]
        if "graph_ms" in r:
            x = r.get("graph_x_transformer")
            cells += [f"{r['eager_tokens_per_s']:,.0f}", f"{r['graph_tokens_per_s']:,.0f}",
                      f"{r['graph_ms']:.3f}", f"{r['bound_ms']:.3f}", f"{r['graph_frac_of_bound']:.0%}",
                      "" if x is None else f"{x:.1f}x"]
        else:
            why = r.get("skipped") or ("error: " + r.get("error", "?")[:80])
            cells += ["–", "–", "–", "–", "–", why]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compact_table(rows: list[dict[str, Any]]) -> str:
    """Model x batch rows, context columns; cells: CUDA-graph tokens/s (fraction of the bound), '–' where
    the combination did not fit."""
    ctxs = sorted({r["context"] for r in rows if "context" in r})
    keys: list[tuple[str, int]] = []
    for r in rows:
        if "context" in r and (r["model"], r["batch"]) not in keys:
            keys.append((r["model"], r["batch"]))
    order = list(dict.fromkeys(m for m, _ in keys))
    keys.sort(key=lambda k: (order.index(k[0]), k[1]))
    cell = {(r["model"], r["batch"], r["context"]): r for r in rows if "context" in r}
    lines = ["| model | batch | " + " | ".join(f"{c // 1024}K" for c in ctxs) + " |",
             "|---|---|" + "---|" * len(ctxs)]
    for m, b in keys:
        out = []
        for c in ctxs:
            r = cell.get((m, b, c))
            if r is None or "graph_tokens_per_s" not in r:
                out.append("–")
            else:
                v = r["graph_tokens_per_s"]
                txt = f"{v / 1000:.1f}K" if v >= 1000 else f"{v:.0f}"
                out.append(f"{txt} ({r['graph_frac_of_bound']:.0%})")
        lines.append(f"| {m} | {b} | " + " | ".join(out) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    args = sys.argv[1:]
    png = None
    if "--png" in args:  # python benchmarks/decode_bench.py a.json b.json --png out.png
        i = args.index("--png")
        png, args = args[i + 1], args[:i] + args[i + 2:]
    rows_all: list[dict[str, Any]] = []
    for path in args:  # several result files (e.g. one per batch size) make one table
        rows_all += json.loads(open(path).read())["rows"]
    _add_ratios(rows_all)
    print(compact_table(rows_all))
    print()
    print(markdown_table(rows_all))
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        plot_decode(rows_all, axes)
        gpu = json.loads(open(args[0]).read())["meta"].get("gpu", "?")
        fig.suptitle(f"decode step, CUDA graph, bf16, on {gpu} (dotted b=1, solid b=16, dashed b=64)",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
