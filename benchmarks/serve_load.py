"""Load test of `transmamba serve`: requests/s and p50 / p99 latency against the number of concurrent clients.

    python benchmarks/serve_load.py --preset transmamba-tiny --out runs/serve_load        (server in-process)
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --out runs/serve_load      (a running server)

For each concurrency c, c clients send `--requests` streaming /v1/completions requests in all (each client
sends its next request when the previous one has finished), every prompt `--prompt-tokens` random byte
tokens, up to `--max-tokens` new tokens, greedy (a row stops early at EOS, so the mean generated length is
reported, not assumed). Per request: latency (send to
last byte) and time to first token (send to the first streamed token). Per level: requests/s = requests /
wall time, tokens/s = generated tokens / wall time, p50 / p99 of latency and TTFT (nearest-rank).
Writes <out>/serve_load.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import socket
import sys
import threading
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def start_local(preset: str, max_batch: int, max_tokens: int, threads: int):
    """A server for `preset` (random weights, byte tokenizer) in a thread -> (url, stop())."""
    import torch
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


async def level(url: str, concurrency: int, n_requests: int, prompt_tokens: int, max_tokens: int,
                rng: random.Random) -> dict:
    import httpx

    prompts = [[rng.randrange(256) for _ in range(prompt_tokens)] for _ in range(n_requests)]
    queue = list(range(n_requests))
    results: list[dict] = []

    async def client_loop(client):
        while queue:
            i = queue.pop()
            results.append(await one_request(client, url, prompts[i], max_tokens))

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results]
    toks = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": n_requests, "wall_s": wall,
            "requests_per_s": n_requests / wall, "tokens_per_s": toks / wall,
            "p50_latency_s": percentile(lat, 50), "p99_latency_s": percentile(lat, 99),
            "p50_ttft_s": percentile(ttft, 50), "p99_ttft_s": percentile(ttft, 99),
            "mean_tokens": toks / n_requests}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--url", help="a running server (default: start one in this process)")
    src.add_argument("--preset", default="transmamba-tiny", help="preset to serve in-process")
    p.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated client counts")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16, help="in-process server: rows per decode step")
    p.add_argument("--threads", type=int, default=1, help="in-process server: torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/serve_load", help="output folder")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    stop, engine = None, None
    url = args.url
    if url is None:
        url, stop, engine = start_local(args.preset, args.max_batch, args.max_tokens, args.threads)
    rng = random.Random(args.seed)
    rows = []
    try:
        asyncio.run(level(url, 1, 2, args.prompt_tokens, args.max_tokens, rng))  # warm-up
        for c in levels:
            rows.append(asyncio.run(level(url, c, args.requests, args.prompt_tokens, args.max_tokens, rng)))
            if engine is not None:
                rows[-1]["largest_batch"] = engine.batcher.max_rows_seen
    finally:
        if stop is not None:
            stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "server": url if args.url else f"in-process {args.preset}, max_batch {args.max_batch}, "
            f"{args.threads} torch thread(s)", "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens}
    (out / "serve_load.json").write_text(json.dumps({"meta": meta, "levels": rows}, indent=2) + "\n")
    print("| clients | largest batch | requests/s | tokens/s | p50 latency (s) | p99 latency (s) "
          "| p50 TTFT (s) | p99 TTFT (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r.get('largest_batch', '-')} | {r['requests_per_s']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {r['p50_latency_s']:.3f} | {r['p99_latency_s']:.3f} | "
              f"{r['p50_ttft_s']:.3f} | {r['p99_ttft_s']:.3f} |")
    print(f"wrote {out / 'serve_load.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
