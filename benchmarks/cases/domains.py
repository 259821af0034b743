"""Domain cases: PoinTramba and Dimba throughput / memory against their same-size baselines, and the load test
of `transmamba serve`. They run on the CPU and, where there is one, the GPU.

pointcloud: for each device (CPU, and CUDA when present, in one run) and each number of groups G (clouds of
4·G points, K 16, as the paper's 1024 points / 256 groups), PoinTramba (BIO: 2G tokens through the Mamba
blocks) and `attention_baseline` (same width, as many bidirectional attention blocks as make the same
parameter count, G tokens) are timed: inference (eval mode, no grad) clouds/s and one training step
(forward, loss, backward, AdamW step) in ms; medians over --pc-iters after 2 warm-up calls, CUDA timed with
synchronisation. Memory: CUDA peak allocated bytes of a training step (`max_memory_allocated`); on the CPU
every case runs in its own child process and reports its peak RSS (`ru_maxrss`).

diffusion-scaling: training-step memory and images/s against resolution (token count) for Dimba
(--diff-d-model, --diff-depth attention blocks each followed by one BiMamba block, Mamba-1) and the
attention-only (DiT/PixArt) and Mamba-only (DiS-style) networks with the depth that matches its parameter
count (`equal_params_config`). Inputs: 4-channel latents of side `size` (patch 2: T = (size/2)² tokens),
class-conditional, batch --diff-batch. A training step: forward, loss (ε-MSE + VLB), backward, AdamW. Memory:
on CUDA the peak of `torch.cuda.max_memory_allocated` over one training step after warm-up; on the CPU the
same parts counted exactly: parameter bytes × 4 (weights, gradients, two AdamW moments) plus the bytes of the
distinct tensors autograd saves for backward. images/s: median of --diff-iters timed steps after 2 warm-ups
(CUDA events on the GPU), and forward images/s (one network evaluation). Out-of-memory cases are reported.

serve-load: for each concurrency c, c clients send --serve-requests streaming /v1/completions requests in all
(each client sends its next request when the previous one has finished), every prompt --serve-prompt-tokens
random byte tokens, up to --serve-max-tokens new tokens, greedy (a row stops early at EOS, so the mean
generated length is reported). Per request: latency (send to last byte) and time to first token. Per level:
requests/s, tokens/s, p50 / p99 of latency and TTFT (nearest-rank). The server runs in this process
(--serve-preset, random weights, byte tokenizer) unless --serve-url names a running one.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from typing import Any

import torch

from benchmarks.cases import case, option
from benchmarks.common import ROOT, event_ms, median_s, saved_bytes, show

option("--threads", type=int, default=None, help="pointcloud / serve-load: torch CPU threads")
option("--pc-preset", default="pointramba", help="pointcloud: PoinTramba preset")
option("--pc-groups-gpu", default="64,128,256,512,1024", help="pointcloud: group counts G on the GPU")
option("--pc-groups-cpu", default="32,64,128", help="pointcloud: group counts G on the CPU")
option("--pc-batch", type=int, default=32, help="pointcloud: GPU batch")
option("--pc-cpu-batch", type=int, default=4, help="pointcloud: CPU batch")
option("--pc-iters", type=int, default=10, help="pointcloud: timed GPU calls (median)")
option("--pc-cpu-iters", type=int, default=3, help="pointcloud: timed CPU calls (median)")
option("--pc-cpu-only", action="store_true", help="pointcloud: skip the GPU")
option("--pc-case-timeout", type=float, default=300, help="pointcloud: seconds per CPU child process")
option("--diff-devices", default="cpu,cuda", help="diffusion-scaling: devices (cuda skipped without a GPU)")
option("--diff-d-model", type=int, default=None, help="diffusion-scaling: width (128 CPU, 1152 CUDA)")
option("--diff-depth", type=int, default=None, help="diffusion-scaling: Dimba depth (default 2 CPU, 28 CUDA)")
option("--diff-heads", type=int, default=None, help="diffusion-scaling: heads (default 4 CPU, 16 CUDA)")
option("--diff-sizes", default=None, help="diffusion-scaling: latent sides (8,16,32 CPU; 32,64,128 CUDA)")
option("--diff-batch", type=int, default=4, help="diffusion-scaling: batch")
option("--diff-iters", type=int, default=3, help="diffusion-scaling: timed steps (median)")
option("--diff-dtype", choices=["fp32", "bf16"], default=None, help="diffusion-scaling: fp32 CPU, bf16 CUDA")
option("--diff-archs", default="dimba,attention,mamba", help="diffusion-scaling: networks")
option("--serve-url", default=None, help="serve-load: a running server (default: one in this process)")
option("--serve-preset", default="transmamba-tiny", help="serve-load: preset served in-process")
option("--serve-concurrency", default="1,2,4,8,16", help="serve-load: comma-separated client counts")
option("--serve-requests", type=int, default=32, help="serve-load: requests per concurrency level")
option("--serve-prompt-tokens", type=int, default=32, help="serve-load: prompt length")
option("--serve-max-tokens", type=int, default=32, help="serve-load: new tokens per request")
option("--serve-max-batch", type=int, default=16, help="serve-load: in-process server's rows per decode step")
option("--serve-seed", type=int, default=0, help="serve-load: prompt seed")


# ---- pointcloud ----------------------------------------------------------------------------------------


def pointcloud_row(case: dict) -> dict:
    """Time one (device, model, G) case; returns the row."""
    from transmamba.pointcloud.model import PoinTramba, PoinTrambaConfig, attention_baseline

    device = torch.device(case["device"])
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    G, B = case["groups"], case["batch"]
    cfg = PoinTrambaConfig.from_preset(case["preset"], num_groups=G, num_points=4 * G)
    cfg = attention_baseline(cfg) if case["model"] == "attention" else cfg
    torch.manual_seed(0)
    model = PoinTramba(cfg).to(device)
    x = torch.randn(B, 4 * G, 3, device=device)
    y = torch.randint(0, cfg.num_classes, (B,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def infer():
        with torch.no_grad():
            model(x)

    def step():
        loss, _ = model.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.eval()
    t_inf = median_s(infer, case["iters"], case["warmup"], device)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_step = median_s(step, case["iters"], case["warmup"], device)
    row = {**case, "parameters": model.num_parameters(), "depth": cfg.depth, "tokens": cfg.seq_len,
           "infer_clouds_per_s": B / t_inf, "train_step_ms": 1e3 * t_step}
    if device.type == "cuda":
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        row["gpu"] = torch.cuda.get_device_name()
    else:
        row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


_CHILD = ("import json, sys; sys.path[:0] = [{root!r}, {src!r}]; from benchmarks.cases.domains import "
          "pointcloud_row; print(json.dumps(pointcloud_row(json.loads(sys.argv[1]))))")


@case("pointcloud", "PoinTramba vs the same-size all-attention model: clouds/s, train-step ms, memory",
      gpu=False)
def run_pointcloud(args) -> list[dict[str, Any]]:
    devices = [("cpu", args.pc_groups_cpu, args.pc_cpu_batch, args.pc_cpu_iters)]
    if torch.cuda.is_available() and not args.pc_cpu_only:
        devices.append(("cuda", args.pc_groups_gpu, args.pc_batch, args.pc_iters))
    rows = []
    for dev, groups, batch, iters in devices:
        for G in [int(g) for g in groups.split(",")]:
            for model in ("paper", "attention"):
                case = {"device": dev, "preset": args.pc_preset, "model": model, "groups": G, "batch": batch,
                        "iters": iters, "warmup": 2, "threads": args.threads}
                try:
                    if dev == "cpu":  # own process: peak RSS belongs to this case alone
                        code = _CHILD.format(root=str(ROOT), src=str(ROOT / "src"))
                        res = subprocess.run([sys.executable, "-c", code, json.dumps(case)],
                                             capture_output=True, text=True, timeout=args.pc_case_timeout)
                        if res.returncode != 0:
                            raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr
                                               else "failed")
                        row = json.loads(res.stdout.strip().splitlines()[-1])
                    else:
                        row = pointcloud_row(case)
                        torch.cuda.empty_cache()
                except (RuntimeError, subprocess.TimeoutExpired, torch.cuda.OutOfMemoryError) as err:
                    row = {**case, "error": str(err)[:200]}
                show(row)
                rows.append(row)
    return rows


# ---- diffusion-scaling -----------------------------------------------------------------------------------


def diffusion_row(cfg, size: int, batch: int, device: torch.device, iters: int, dtype) -> dict:
    from transmamba.diffusion.model import Dimba
    from transmamba.diffusion.schedule import diffusion_loss, make_train_scheduler

    cfg = replace(cfg, image_size=size)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device (a 1 B model takes minutes on the CPU)
        model = Dimba(cfg)
    n_params = model.num_parameters()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = make_train_scheduler("linear", 1000, cfg.learn_sigma)
    x = torch.randn(batch, cfg.in_channels, size, size, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def fwd_loss():
        with autocast:
            return diffusion_loss(model, sched, x, y)[0]

    def step():
        loss = fwd_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocates AdamW state, compiles Triton kernels)
    step()
    res = {"tokens": cfg.num_tokens, "size": size, "params": n_params}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        res["memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        times = [t / 1e3 for t in event_ms(step, iters)]
    else:
        act = saved_bytes(fwd_loss)
        res["memory_gib"] = (4 * 4 * n_params + act) / 2**30
        res["activations_gib"] = act / 2**30
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    res["train_img_s"] = batch / statistics.median(times)
    model.eval()
    t = torch.full((batch,), 500, device=device)
    with torch.no_grad(), autocast:
        model(x, t, y)
        res["forward_img_s"] = batch / median_s(lambda: model(x, t, y), iters, 0, device)
    model = opt = None  # free before the next case
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


@case("diffusion-scaling", "Dimba vs attention-only vs Mamba-only: train-step memory and images/s vs tokens",
      gpu=False)
def run_diffusion_scaling(args) -> list[dict[str, Any]]:
    from transmamba.diffusion.model import DimbaConfig, count_parameters, equal_params_config

    rows = []
    for dev_name in args.diff_devices.split(","):
        dev = torch.device(dev_name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: GPU cases skipped")
            continue
        gpu = dev.type == "cuda"
        d = args.diff_d_model or (1152 if gpu else 128)
        sizes = [int(s) for s in (args.diff_sizes or ("32,64,128" if gpu else "8,16,32")).split(",")]
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.diff_dtype or ("bf16" if gpu
                                                                               else "fp32")]
        base = DimbaConfig(image_size=sizes[0], in_channels=4, patch_size=2, d_model=d,
                           depth=args.diff_depth or (28 if gpu else 2),
                           n_heads=args.diff_heads or (16 if gpu else 4),
                           num_classes=1000, learn_sigma=True)
        cfgs = {"dimba": base, **{a: equal_params_config(base, a) for a in ("attention", "mamba")}}
        for arch in args.diff_archs.split(","):
            cfg = cfgs[arch]
            for size in sizes:
                try:
                    r = diffusion_row(cfg, size, args.diff_batch, dev, args.diff_iters, dtype)
                except torch.OutOfMemoryError:
                    r = {"tokens": (size // 2) ** 2, "size": size, "error": "out of memory"}
                    torch.cuda.empty_cache()
                except RuntimeError as err:  # keep the other cases; the message goes in the table
                    r = {"tokens": (size // 2) ** 2, "size": size, "error": f"error: {str(err)[:120]}"}
                    if gpu:
                        torch.cuda.empty_cache()
                r.update(device=dev.type, arch=arch, depth=cfg.depth, d_model=d, batch=args.diff_batch,
                         dtype=str(dtype).replace("torch.", ""), params=count_parameters(cfg))
                show(r)
                rows.append(r)
    return rows


# ---- serve-load ------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def start_local(preset: str, max_batch: int, max_tokens: int, threads: int):
    """A server for `preset` (random weights, byte tokenizer) in a thread -> (url, stop(), engine)."""
    import uvicorn

    from transmamba.models.lm import CausalLM
    from transmamba.serving import ByteTokenizer, Engine, Limits, create_app

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CausalLM.from_preset(preset).eval()
    engine = Engine(model, ByteTokenizer(model.config.vocab_size), name=preset,
                    limits=Limits(max_tokens=max_tokens), max_batch=max_batch)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(10)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop, engine


async def one_request(client, url: str, prompt: list[int], max_tokens: int) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "return_token_ids": True}
    t0 = time.perf_counter()
    first, n = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ids = json.loads(line[6:])["choices"][0].get("token_ids", [])
            if ids and first is None:
                first = time.perf_counter() - t0
            n += len(ids)
    return {"latency": time.perf_counter() - t0, "ttft": first or 0.0, "tokens": n}


async def load_level(url: str, concurrency: int, n_requests: int, prompt_tokens: int, max_tokens: int,
                     rng: random.Random) -> dict:
    import httpx

    prompts = [[rng.randrange(256) for _ in range(prompt_tokens)] for _ in range(n_requests)]
    queue = list(range(n_requests))
    results: list[dict] = []

    async def client_loop(client):
        while queue:
            i = queue.pop()
            results.append(await one_request(client, url, prompts[i], max_tokens))

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat, ttft = [r["latency"] for r in results], [r["ttft"] for r in results]
    toks = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": n_requests, "wall_s": wall,
            "requests_per_s": n_requests / wall, "tokens_per_s": toks / wall,
            "p50_latency_s": percentile(lat, 50), "p99_latency_s": percentile(lat, 99),
            "p50_ttft_s": percentile(ttft, 50), "p99_ttft_s": percentile(ttft, 99),
            "mean_tokens": toks / n_requests}


@case("serve-load", "`transmamba serve` under load: requests/s, p50 / p99 latency and TTFT vs clients",
      gpu=False)
def run_serve_load(args) -> list[dict[str, Any]]:
    stop, engine, url = None, None, args.serve_url
    if url is None:
        url, stop, engine = start_local(args.serve_preset, args.serve_max_batch, args.serve_max_tokens,
                                        args.threads or 1)
    rng = random.Random(args.serve_seed)
    server = url if args.serve_url else (f"in-process {args.serve_preset}, max_batch {args.serve_max_batch}, "
                                         f"{args.threads or 1} torch thread(s)")
    rows = []
    try:
        asyncio.run(load_level(url, 1, 2, args.serve_prompt_tokens, args.serve_max_tokens, rng))  # warm-up
        for c in [int(c) for c in args.serve_concurrency.split(",")]:
            row = asyncio.run(load_level(url, c, args.serve_requests, args.serve_prompt_tokens,
                                         args.serve_max_tokens, rng))
            if engine is not None:
                row["largest_batch"] = engine.batcher.max_rows_seen
            row.update(server=server, prompt_tokens=args.serve_prompt_tokens,
                       max_tokens=args.serve_max_tokens)
            show(row)
            rows.append(row)
    finally:
        if stop is not None:
            stop()
    return rows
