"""Generation as users meet it: `model.generate` against the captured decode step, prefill time and memory.

    python benchmarks/generation.py --out runs/generation                     (one H200: about 3-5 minutes)
    python benchmarks/generation.py --shapes 4096x16 --models transmamba --out runs/gen-quick
    python benchmarks/generation.py --tiny --device cpu --shapes 64x2 --new-tokens 9 --out runs/gen-cpu

For each model (bf16; TransMamba-400M, the Transformer with its non-embedding parameter count, a Mamba-2
hybrid of the same shape with 2 attention mixers in 12) and each prompt shape context x batch (random ids):

    ttft_s              median wall time of generate(ids, max_new_tokens=1): prefill + the first token
    generate_tok_s      batch * n / (median time of generate(n + 1 new tokens) - ttft_s): decode tokens/s
                        through `model.generate` (greedy, do_sample=False, the default cuda_graph="auto")
                        after a warm-up call of the same shape, so the calls reuse the decode workspace
                        (cache buffers + CUDA graphs, `inference.generate`) as repeated calls do
    generate_cold_tok_s     one call after `release_decode_workspace`: a new cache, an eager step and a
                        capture per TransPoint signature inside the timing (a first call at a new shape)
    generate_chunked_tok_s  the same with chunks of 16 captured steps forced on (CHUNK_MIN_TOKENS = 0; by
                        default only runs of >= 256 tokens use them): the A/B of the chunks (CUDA only)
    step_tok_s          batch * n / time of n replays of the captured static step (`StaticDecoder`,
                        CUDA graph) on a cache prefilled with the same prompts: the decode floor generate
                        can reach; generate_frac = generate_tok_s / step_tok_s
    ms_per_token        decode ms per generated token of one row (1e3 * (full - ttft) / n)
    bound_ms            bytes one decode step must move (every weight but the embedding table once, the KV /
                        state bytes read and written: benchmarks/decode_bench.step_bytes) / measured copy
                        bandwidth; bound_frac = bound_ms / ms_per_token (batch 1 is the latency case)
    prefill_peak_GB     torch.cuda.max_memory_allocated over the ttft call (weights included)
    peak_GB             the same over the full generate call
    sdpa_warnings       PyTorch attention warnings raised during a prefill (e.g. a fused kernel refused; the
                        most in one call, the first call of the shape included)

Timing is wall clock with the device synchronised at both ends, after one untimed warm-up call of the same
shape (kernel compilation, graph capture, allocator growth); medians over --reps calls. Cases past
--time-budget seconds are skipped and listed. Writes <out>/generation.json (rows + metadata) and
<out>/generation.md (the table).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_bench import step_bytes  # noqa: E402

HYBRID_PATTERN = "M-M-M-M-M-*-M-M-M-M-M-*-"  # as benchmarks/run.py: 10 Mamba-2 + 2 attention mixers
MODELS = {  # label -> (preset, overrides)
    "transmamba": ("transmamba-400m", {}),
    "transformer": ("transformer-400m-eq", {}),
    "hybrid": ("mamba2-400m", {"pattern": HYBRID_PATTERN}),
}
TINY = {
    "transmamba": ("transmamba-tiny", {}),
    "transformer": ("transformer-tiny", {}),
    "hybrid": ("mamba2-tiny", {"pattern": "M-*-M-"}),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth_GBps(device: torch.device) -> float | None:
    """Device-to-device copy rate, bytes read + written per second (median of 10 copies of 1 GiB)."""
    if device.type != "cuda":
        return None
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * (1 << 30) / sorted(times[2:])[len(times[2:]) // 2] / 1e9


def build(preset: str, over: dict, max_len: int, device: torch.device, dtype: torch.dtype):
    from transmamba.models import CausalLM, get_preset

    torch.manual_seed(0)
    with torch.device(device):
        model = CausalLM(get_preset(preset, max_seq_len=max_len, **over))
    return model.to(dtype).eval()


def timed_generate(model, ids: torch.Tensor, n: int) -> tuple[float, float | None, int]:
    """(seconds, peak GB or None, SDPA warnings) of one greedy generate call with n new tokens."""
    dev = model.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, do_sample=False)
        _sync(dev)
        sec = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None
    sdpa = sum(1 for w in caught if "attention" in str(w.message).lower() or "sdp" in str(w.message).lower())
    return sec, peak, sdpa


def captured_step(model, ids: torch.Tensor, n: int) -> tuple[float, dict[str, int]]:
    """Seconds for n replays of the captured static step after prefilling ids, and the step's bytes."""
    from transmamba.inference.generate import prefill
    from transmamba.inference.static_decode import StaticDecoder

    b, ctx = ids.shape
    with torch.no_grad():
        cache, logits, _ = prefill(model, ids.tolist(), ctx + n + 4)
        nbytes = step_bytes(model, cache, ctx)
        dec = StaticDecoder(model, cache, cuda_graph=model.device.type == "cuda")
        nxt = logits.argmax(-1)
        for _ in range(2):  # eager step of the signature, then its capture
            dec.step(nxt)
        _sync(model.device)
        t0 = time.perf_counter()
        for _ in range(n):
            dec.step(nxt)  # same ids each step: the cost of a step does not depend on them
        _sync(model.device)
        sec = time.perf_counter() - t0
    del cache, dec
    return sec, nbytes


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def run_case(model, ctx: int, b: int, n: int, reps: int, bw: float | None) -> dict[str, Any]:
    gen_mod = importlib.import_module("transmamba.inference.generate")  # (the package's is the function)
    gen = torch.Generator().manual_seed(ctx + b)
    ids = torch.randint(0, model.config.vocab_size, (b, ctx), generator=gen).to(model.device)
    row: dict[str, Any] = {}
    gen_mod.release_decode_workspace(model)  # no cache kept from another shape in the prefill's peak
    warn = timed_generate(model, ids, 1)[2]  # warm-up of the prefill (a warning may be issued only once)
    ttfts, fulls, pre_peak, peak = [], [], 0.0, 0.0
    for _ in range(reps):
        sec, pk, w = timed_generate(model, ids, 1)
        ttfts.append(sec)
        pre_peak, warn = max(pre_peak, pk or 0.0), max(warn, w)
    ttft = median(ttfts)
    timed_generate(model, ids, n + 1)  # warm-up: kernels of the decode, and the workspace with its graphs
    for _ in range(reps):  # calls that reuse the workspace (the same shape as the warm-up)
        sec, pk, _ = timed_generate(model, ids, n + 1)
        fulls.append(sec)
        peak = max(peak, pk or 0.0)
    full = median(fulls)
    dec = max(full - ttft, 1e-9)
    row.update(ttft_s=ttft, generate_s=full, generate_tok_s=b * n / dec, ms_per_token=dec / n * 1e3,
               sdpa_warnings=warn)
    if model.device.type == "cuda":
        gen_mod.release_decode_workspace(model)  # a first call at this shape: new cache, eager step, captures
        cold = timed_generate(model, ids, n + 1)[0]
        row["generate_cold_tok_s"] = b * n / max(cold - ttft, 1e-9)
        least = gen_mod.CHUNK_MIN_TOKENS  # A/B: the same calls with chunks of captured steps forced on
        gen_mod.CHUNK_MIN_TOKENS = 0
        try:
            timed_generate(model, ids, n + 1)
            chunked = median([timed_generate(model, ids, n + 1)[0] for _ in range(reps)])
        finally:
            gen_mod.CHUNK_MIN_TOKENS = least
        row["generate_chunked_tok_s"] = b * n / max(chunked - ttft, 1e-9)
        row.update(prefill_peak_GB=pre_peak, peak_GB=peak)
    gen_mod.release_decode_workspace(model)
    step_s, nbytes = captured_step(model, ids, n)
    row.update(step_tok_s=b * n / step_s, step_ms=step_s / n * 1e3, **nbytes)
    for name in ("generate", "generate_cold", "generate_chunked"):
        if f"{name}_tok_s" in row:
            row[f"{name}_frac"] = row[f"{name}_tok_s"] / row["step_tok_s"]
    if bw:
        row["bound_ms"] = nbytes["total_bytes"] / (bw * 1e9) * 1e3
        row["bound_frac"] = row["bound_ms"] / row["ms_per_token"]
        row["step_bound_frac"] = row["bound_ms"] / row["step_ms"]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | context x batch | generate tok/s | first-call tok/s | chunked tok/s | "
            "captured step tok/s | generate / step | ms/token | bound ms | TTFT (s) | prefill peak GB | "
            "peak GB |")
    lines = [head, "|" + "---|" * 12]
    f = lambda r, k, fmt: format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "-"  # noqa: E731
    for r in rows:
        if "error" in r or "skipped" in r:
            why = r.get("error") or r["skipped"]
            lines.append(f"| {r['model']} | {r['context']} x {r['batch']} | {why} |")
            continue
        lines.append(f"| {r['model']} | {r['context']} x {r['batch']} | {f(r, 'generate_tok_s', ',.0f')} | "
                     f"{f(r, 'generate_cold_tok_s', ',.0f')} | {f(r, 'generate_chunked_tok_s', ',.0f')} | "
                     f"{f(r, 'step_tok_s', ',.0f')} | "
                     f"{f(r, 'generate_frac', '.2f')} | "
                     f"{f(r, 'ms_per_token', '.3f')} | {f(r, 'bound_ms', '.3f')} | {f(r, 'ttft_s', '.3f')} | "
                     f"{f(r, 'prefill_peak_GB', '.1f')} | {f(r, 'peak_GB', '.1f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/generation", help="output folder")
    p.add_argument("--models", default="transmamba,transformer,hybrid", help="comma-separated labels")
    p.add_argument("--shapes", default="4096x16,32768x1,32768x16", help="context x batch, comma-separated")
    p.add_argument("--new-tokens", type=int, default=128, help="decode tokens timed (generate makes n + 1)")
    p.add_argument("--reps", type=int, default=3, help="timed generate calls per measurement (median)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp32"],
                   help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--tiny", action="store_true", help="the -tiny presets (a smoke run of this script)")
    p.add_argument("--time-budget", type=float, default=360.0,
                   help="seconds; cases not started by then are skipped (default: 360)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda"
                                                                           else "fp32")]
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]
    registry = TINY if args.tiny else MODELS
    labels = [m for m in args.models.split(",") if m]
    unknown = [m for m in labels if m not in registry]
    if unknown:
        raise SystemExit(f"unknown model labels {unknown}; choose from {sorted(registry)}")
    t_start = time.perf_counter()
    bw = copy_bandwidth_GBps(device)
    rows: list[dict[str, Any]] = []
    max_len = max(c for c, _ in shapes) + args.new_tokens + 16
    models: dict[str, Any] = {}  # built once each (bf16 400M: ~1 GB apiece), shapes in the outer loop so a
    # run cut short by the time budget still has every model at the first shapes
    for ctx, b in shapes:
        for label in labels:
            preset, over = registry[label]
            row: dict[str, Any] = {"model": label, "preset": preset, "context": ctx, "batch": b}
            if time.perf_counter() - t_start > args.time_budget:
                row["skipped"] = f"time budget of {args.time_budget:.0f} s spent"
                rows.append(row)
                continue
            try:
                if label not in models:
                    models[label] = build(preset, over, max_len, device, dtype)
                model = models[label]
                row["params"] = sum(p.numel() for p in model.parameters())
                row.update(run_case(model, ctx, b, args.new_tokens, args.reps, bw))
            except Exception as err:  # noqa: BLE001  (one failing case must not lose the others)
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                traceback.print_exc()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
            rows.append(row)
    rows.sort(key=lambda r: (labels.index(r["model"]), shapes.index((r["context"], r["batch"]))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    given = argv if argv is not None else sys.argv[1:]
    meta = {"command": "python benchmarks/generation.py " + " ".join(given),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch": torch.__version__, "dtype": str(dtype), "new_tokens": args.new_tokens, "reps": args.reps,
            "copy_GBps": bw, "seconds": time.perf_counter() - t_start}
    (out / "generation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "generation.md").write_text(table(rows) + "\n")
    print(table(rows))
    print(f"wrote {out / 'generation.json'} in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
