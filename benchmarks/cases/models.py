# ruff: noqa: E501
"""Model-level cases: the training step, the TransPoint sweep, one decode step, and generation as users meet it.

train-step / transpoint-sweep: tokens/s, MFU and peak memory of a whole training step (bf16 autocast, fused
AdamW), the median of CUDA-event timings of `--train-steps` steps after two warm-up steps.

decode: tokens/s of one decode step, eager vs CUDA graph. For each model (bf16, built on the GPU), context c
and batch b:
1. a cache sized for c + a few hundred tokens is filled synthetically (random K/V for the first c positions
   of every attention layer, random conv / SSM states, TransMamba layers in the mode position c puts them
   in: attention with a random (B, x, dt) cache while c < P, else converted with the KV cache freed) and
   every row is put at position c. A decode step's cost does not depend on the values, and this skips a
   128K-token prefill.
2. three ways of running a step are timed, each over n steps (wall clock, synchronised at both ends,
   so host overhead counts): `eager` = `CausalLM.step(ids, cache)` without modes (the same kernels, plus
   the bookkeeping and its device sync every step), `static` = the static step run eagerly
   (`StaticDecoder(cuda_graph=False)`), `graph` = the static step replayed from a CUDA graph
   (`StaticDecoder(cuda_graph=True)`, after its eager step and capture).
3. bound = bytes a step must move / measured copy bandwidth: every weight except the embedding table read
   once (plus b embedding rows), each attention KV row read up to its length plus the new entry written, and
   every fixed-size state read and written once. frac = bound / measured time.
Combinations whose cache would not fit next to the weights in `MEM_LIMIT` bytes are skipped and listed.

generation: `model.generate` as users meet it (greedy, the default `cuda_graph="auto"`) against the captured
static step, with TTFT, the bandwidth bound and prefill / peak memory, for TransMamba-400M, the Transformer
with its non-embedding parameter count and a Mamba-2 hybrid of the same shape (2 attention mixers in 12), at
each prompt shape context x batch (random ids). Every column is defined in docs/generation.md ("Method").
Timing is wall clock with the device synchronised at both ends, after one untimed warm-up call of the same
shape; medians over --gen-reps calls. Cases past --gen-time-budget seconds are skipped and listed.
"""

from __future__ import annotations

import importlib
import json
import statistics
import time
import traceback
import warnings
from typing import Any

import torch

from benchmarks.cases import case, option
from benchmarks.common import build_lm, ceilings, event_ms, show, spec_bf16_flops, sync, wall_ms
from benchmarks.report import with_decode_ratios

option("--train-lengths", default="2048,8192", help="train-step sequence lengths")
option("--train-tokens", type=int, default=16384, help="train-step tokens per step")
option("--train-models", default="transmamba-400m,transformer-400m-eq,mamba2-400m,mamba2-hybrid-400m",
       help="train-step models (labels of TRAIN_MODELS)")
option("--train-steps", type=int, default=5, help="train-step: timed steps after 2 warm-up steps (median reported)")
option("--no-fused-loss", action="store_true", help="train-*: materialise the logits (plain CE)")
option("--checkpointing", action="store_true", help="train-*: activation checkpointing per block")
option("--tm-full-ssd", default="auto", choices=["auto", "on", "off"],
       help="train-*: TransMamba training path (off = converter + suffix SSD, the inference path)")
option("--decode-contexts", default="4096,8192,16384,32768,65536,131072", help="decode context lengths")
option("--decode-batches", default="1,16,64", help="decode batch sizes")
option("--decode-models", default="", help="decode: only these models (comma-separated labels; default all)")
option("--decode-target-ms", type=float, default=150.0,
       help="decode: wall-clock ms to spend on each timing (steps = target / first step)")
option("--gen-models", default="transmamba,transformer,hybrid", help="generation: comma-separated labels")
option("--gen-shapes", default="4096x16,32768x1,32768x16", help="generation: context x batch, comma-separated")
option("--gen-new-tokens", type=int, default=128, help="generation: decode tokens timed (generate makes n + 1)")
option("--gen-reps", type=int, default=3, help="generation: timed generate calls per measurement (median)")
option("--gen-device", default="cuda", help="generation: device")
option("--gen-dtype", default=None, choices=["bf16", "fp32"], help="generation: default bf16 on CUDA, fp32 on CPU")
option("--gen-tiny", action="store_true", help="generation: the -tiny presets (a smoke run)")
option("--gen-time-budget", type=float, default=360.0, help="generation: seconds; cases not started by then are skipped")

HYBRID_400M_PATTERN = "M-M-M-M-M-*-M-M-M-M-M-*-"  # 10 Mamba-2 + 2 attention mixers (Mamba-2-Hybrid 8B: 4 of 28)
MEM_LIMIT = 74e9  # decode: of the H100's 80 GB, weights + cache + the step's working memory stay below this
EXTRA = 256  # decode: positions allocated past the context for the timed steps


# ---- training step ---------------------------------------------------------------------------------------

TRAIN_MODELS = {  # label -> (preset, overrides); transformer-400m-eq has transmamba-400m's non-embedding size
    "transmamba-400m": ("transmamba-400m", {}),
    "transformer-400m-eq": ("transformer-400m-eq", {}),
    "transformer-400m-deep": ("transformer-400m", {"pattern": "*-" * 18}),
    "transformer-400m": ("transformer-400m", {}),
    "mamba2-400m": ("mamba2-400m", {}),
    "mamba2-hybrid-400m": ("mamba2-400m", {"pattern": HYBRID_400M_PATTERN}),
}


def _train_model(preset: str, over: dict, T: int, args):
    """The model built directly on the GPU (fast init, fp32 weights), with the training-speed options of `args`."""
    model = build_lm(preset, over, max(T, 8192), "cuda", dtype=None).train()
    model.fused_loss = not args.no_fused_loss
    model.gradient_checkpointing = bool(args.checkpointing)
    for layer in model.transmamba_layers():  # auto: one full SSD when training on CUDA; off: converter path
        layer.full_ssd_in_training = {"auto": None, "on": True, "off": False}[args.tm_full_ssd]
    return model


def _train_one(preset: str, over: dict, T: int, tokens_per_step: int, args) -> dict[str, Any]:
    """One model's training step (bf16 autocast, fused AdamW): median ms of `--train-steps` steps after two
    warm-up steps, tokens/s, MFU, peak memory.

    mfu_spec = model FLOPs (`models/flops.py`: projections + LM head + attention + SSD, training = 3 x
    forward) x tokens/s / the GPU's datasheet dense bf16 rate (989.4 TFLOP/s on an H100 SXM); mfu = the same
    over the bf16 matmul rate measured in this run (an 8192^3 matmul); mfu_6n = 6 x non-embedding
    parameters x tokens/s over the measured rate (the earlier convention)."""
    from transmamba.models.flops import train_flops_per_token

    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    model = _train_model(preset, over, T, args)
    b = max(1, tokens_per_step // T)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (b, T), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    times = event_ms(step, args.train_steps)  # whole steps are long: CUDA events around each, the median
    ms = sorted(times)[len(times) // 2]
    fl = train_flops_per_token(model.config, T)
    peak = ceilings()["bf16_TFLOPs"] * 1e12
    tok_s = b * T / ms * 1e3
    n_ne = model.num_parameters(exclude_embeddings=True)
    spec = spec_bf16_flops()
    row = dict(batch=b, step_ms=ms, tokens_per_s=tok_s, mfu=fl["total"] * tok_s / peak,
               mfu_spec=fl["total"] * tok_s / spec if spec else None,
               mfu_6n=6.0 * n_ne * tok_s / peak, train_GFLOP_per_token=fl["total"] / 1e9,
               dense_GFLOP=fl["dense"] / 1e9, attention_GFLOP=fl["attention"] / 1e9, ssd_GFLOP=fl["ssd"] / 1e9,
               params=model.num_parameters(), non_embedding_params=n_ne,
               peak_mem_GB=torch.cuda.max_memory_allocated() / 1e9,
               fused_loss=model.fused_loss, checkpointing=model.gradient_checkpointing, tm_full_ssd=args.tm_full_ssd,
               step_ms_all=[round(t, 2) for t in times])
    return row


def _train_step_rows(presets: list[tuple[str, tuple[str, dict]]], lengths: list[int], tokens_per_step: int,
                     args) -> list[dict[str, Any]]:
    ceilings()
    rows = []
    for label, (preset, over) in presets:
        for T in lengths:
            row: dict[str, Any] = {"model": label, "preset": preset, "T": T, **{k: str(v) for k, v in over.items()}}
            try:
                row.update(_train_one(preset, over, T, tokens_per_step, args))
            except Exception as err:  # noqa: BLE001
                row["error"] = repr(err)[:300]
                traceback.print_exc()
            torch.cuda.empty_cache()
            show(row)
            rows.append(row)
    return rows


@case("train-step", "training step tokens/s and MFU, transmamba-400m vs same-size transformer / mamba2 / hybrid")
def run_train_step(args) -> list[dict[str, Any]]:
    presets = [(m, TRAIN_MODELS[m]) for m in args.train_models.split(",") if m]
    return _train_step_rows(presets, [int(v) for v in args.train_lengths.split(",")], args.train_tokens, args)


@case("transpoint-sweep", "training step time vs a constant TransPoint P at T = 8192")
def run_transpoint_sweep(args) -> list[dict[str, Any]]:
    T = 8192
    presets = []
    for P in (0, 1024, 2048, 4096, 6144, 8192):
        presets.append((f"P={P}", ("transmamba-400m", {"transpoints": [P] * 12})))
    presets.append(("V9", ("transmamba-400m", {})))
    presets.append(("transformer-400m-eq", TRAIN_MODELS["transformer-400m-eq"]))
    return _train_step_rows(presets, [T], args.train_tokens, args)


# ---- decode step ---------------------------------------------------------------------------------------


def decode_models(only: str = "") -> list[tuple[str, str, dict]]:
    """(label, preset, overrides): the transmamba-400m-sized models, the transformer first (the ratios need
    it), Mamba-2 last (the least needed if time runs out); `only` (comma-separated labels) picks a subset."""
    only = [m for m in only.split(",") if m]
    models = [("transformer-400m-eq", "transformer-400m-eq", {}), ("transmamba-400m", "transmamba-400m", {}),
              ("mamba2-hybrid-400m", "mamba2-400m", {"pattern": HYBRID_400M_PATTERN}),
              ("mamba2-400m", "mamba2-400m", {})]
    return [m for m in models if not only or m[0] in only]


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
            first = wall_ms(fn, 1)  # eager: warm-up; graph: the eager step of a new signature
            if name != "eager":
                first = min(first, wall_ms(fn, 1))  # graph: the capture + first replay
            n = _reps(first, target_ms, lo=2 if name == "eager" else 3)
            ms = wall_ms(fn, n)
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


def decode_rows(contexts: list[int], batches: list[int], bw_GBps: float, target_ms: float = 150.0, log=print,
                models: str = "") -> list[dict[str, Any]]:
    from transmamba.inference.cache import cache_bytes_per_sequence

    rows: list[dict[str, Any]] = []
    for label, preset, over in decode_models(models):
        try:
            model = build_lm(preset, over, max(contexts) + EXTRA)
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
                show(row)
                rows.append(row)
        del model
        torch.cuda.empty_cache()
    return with_decode_ratios(rows)


@case("decode", "one decode step tokens/s, eager vs CUDA graph, contexts 4K..128K, batch 1/16/64, vs bandwidth")
def run_decode(args) -> list[dict[str, Any]]:
    return decode_rows([int(v) for v in args.decode_contexts.split(",")],
                       [int(v) for v in args.decode_batches.split(",")], ceilings()["copy_GBps"],
                       target_ms=args.decode_target_ms, models=args.decode_models)


# ---- generation ------------------------------------------------------------------------------------------

GEN_MODELS = {  # label -> (preset, overrides)
    "transmamba": ("transmamba-400m", {}),
    "transformer": ("transformer-400m-eq", {}),
    "hybrid": ("mamba2-400m", {"pattern": HYBRID_400M_PATTERN}),
}
GEN_TINY = {
    "transmamba": ("transmamba-tiny", {}),
    "transformer": ("transformer-tiny", {}),
    "hybrid": ("mamba2-tiny", {"pattern": "M-*-M-"}),
}


def timed_generate(model, ids: torch.Tensor, n: int) -> tuple[float, float | None, int]:
    """(seconds, peak GB or None, SDPA warnings) of one greedy generate call with n new tokens."""
    dev = model.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    sync(dev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, do_sample=False)
        sync(dev)
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
        sync(model.device)
        t0 = time.perf_counter()
        for _ in range(n):
            dec.step(nxt)  # same ids each step: the cost of a step does not depend on them
        sync(model.device)
        sec = time.perf_counter() - t0
    del cache, dec
    return sec, nbytes


def generation_row(model, ctx: int, b: int, n: int, reps: int, bw: float | None) -> dict[str, Any]:
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
    ttft = statistics.median(ttfts)
    timed_generate(model, ids, n + 1)  # warm-up: kernels of the decode, and the workspace with its graphs
    for _ in range(reps):  # calls that reuse the workspace (the same shape as the warm-up)
        sec, pk, _ = timed_generate(model, ids, n + 1)
        fulls.append(sec)
        peak = max(peak, pk or 0.0)
    full = statistics.median(fulls)
    dec = max(full - ttft, 1e-9)
    row.update(ttft_s=ttft, generate_s=full, generate_tok_s=b * n / dec, ms_per_token=dec / n * 1e3,
               sdpa_warnings=warn)
    if model.device.type == "cuda":
        gen_mod.release_decode_workspace(model)  # a first call at this shape: new cache, eager step, captures
        cold = timed_generate(model, ids, n + 1)[0]
        row["generate_cold_tok_s"] = b * n / max(cold - ttft, 1e-9)
        row.update(prefill_peak_GB=pre_peak, peak_GB=peak)
    gen_mod.release_decode_workspace(model)
    step_s, nbytes = captured_step(model, ids, n)
    row.update(step_tok_s=b * n / step_s, step_ms=step_s / n * 1e3, **nbytes)
    for name in ("generate", "generate_cold"):
        if f"{name}_tok_s" in row:
            row[f"{name}_frac"] = row[f"{name}_tok_s"] / row["step_tok_s"]
    if bw:
        row["bound_ms"] = nbytes["total_bytes"] / (bw * 1e9) * 1e3
        row["bound_frac"] = row["bound_ms"] / row["ms_per_token"]
        row["step_bound_frac"] = row["bound_ms"] / row["step_ms"]
    return row


@case("generation", "generate() tokens/s against the captured decode step, TTFT and memory",
      gpu=lambda args: args.gen_device.startswith("cuda"))
def run_generation(args) -> list[dict[str, Any]]:
    device = torch.device(args.gen_device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.gen_dtype or ("bf16" if device.type == "cuda"
                                                                               else "fp32")]
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.gen_shapes.split(",") if s]
    registry = GEN_TINY if args.gen_tiny else GEN_MODELS
    labels = [m for m in args.gen_models.split(",") if m]
    unknown = [m for m in labels if m not in registry]
    if unknown:
        raise ValueError(f"unknown --gen-models labels {unknown}; choose from {sorted(registry)}")
    t_start = time.perf_counter()
    bw = ceilings()["copy_GBps"] if device.type == "cuda" else None
    rows: list[dict[str, Any]] = []
    max_len = max(c for c, _ in shapes) + args.gen_new_tokens + 16
    models: dict[str, Any] = {}  # built once each (bf16 400M: ~1 GB apiece), shapes in the outer loop so a
    # run cut short by the time budget still has every model at the first shapes
    for ctx, b in shapes:
        for label in labels:
            preset, over = registry[label]
            row: dict[str, Any] = {"model": label, "preset": preset, "context": ctx, "batch": b}
            if time.perf_counter() - t_start > args.gen_time_budget:
                row["skipped"] = f"time budget of {args.gen_time_budget:.0f} s spent"
                rows.append(row)
                continue
            try:
                if label not in models:
                    models[label] = build_lm(preset, over, max_len, device, dtype)
                model = models[label]
                row["params"] = sum(p.numel() for p in model.parameters())
                row.update(generation_row(model, ctx, b, args.gen_new_tokens, args.gen_reps, bw))
            except Exception as err:  # noqa: BLE001  (one failing case must not lose the others)
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                traceback.print_exc()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            show(row)
            rows.append(row)
    rows.sort(key=lambda r: (labels.index(r["model"]), shapes.index((r["context"], r["batch"]))))
    return rows
