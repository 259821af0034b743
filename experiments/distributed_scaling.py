"""Training throughput per GPU under torchrun: FSDP2 or DDP, one preset, one sequence length.

    torchrun --nproc-per-node N experiments/distributed_scaling.py --preset transmamba-400m \\
        --seq-len 8192 --parallel fsdp --out OUT/scaling.jsonl

Each rank trains on its own random token rows (batch ``--batch`` rows of ``--seq-len`` per GPU, so 8K tokens
per GPU by default), with the library's training step: bf16 (FSDP2's mixed-precision policy: bf16
all-gather and compute, fp32 reduce-scatter; DDP: bf16 autocast), the fused LM-head loss, AdamW, gradient
clipping. After ``--warmup`` steps, ``--steps`` steps are timed with CUDA events (a barrier before and after)
and rank 0 appends one JSON line: tokens/s per GPU, the global rate, step time, and the peak memory of the
most loaded GPU. Scaling efficiency is tokens/s per GPU at N over the same at 1 (``--report`` prints it
from the JSONL). The time per step is the median over steps, taken on rank 0 after all ranks finish it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="transmamba-400m")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--batch", type=int, default=1, help="rows per GPU per step")
    p.add_argument("--parallel", choices=("fsdp", "ddp"), default="fsdp")
    p.add_argument("--checkpointing", action="store_true", help="recompute each block in the backward")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=None, help="append a JSON line here (rank 0)")
    p.add_argument("--report", default=None, metavar="JSONL", help="only print the scaling table of a JSONL")
    return p.parse_args(argv)


def report(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    base = {(r["preset"], r["parallel"]): r["tokens_per_s_per_gpu"] for r in rows if r["world"] == 1}
    print("| preset | parallel | GPUs | tokens/s per GPU | efficiency vs 1 GPU | step ms | peak GiB/GPU |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["preset"], r["parallel"], r["world"])):
        b = base.get((r["preset"], r["parallel"]))
        eff = f"{100 * r['tokens_per_s_per_gpu'] / b:.1f}%" if b else "n/a"
        print(f"| {r['preset']} | {r['parallel']} | {r['world']} | "
              f"{r['tokens_per_s_per_gpu']:,.0f} | {eff} | "
              f"{r['step_ms']:.1f} | {r['peak_gib']:.1f} |")


def main(argv=None) -> int:
    args = parse(argv)
    if args.report:
        report(args.report)
        return 0
    import torch
    import torch.distributed as dist

    from transmamba import CausalLM
    from transmamba.training import distributed as dist_mod
    from transmamba.training.optim import build_optimizer

    if not torch.cuda.is_available():
        print("distributed_scaling needs CUDA GPUs", file=sys.stderr)
        return 2
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}")
    info = dist_mod.init_distributed(device)
    torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = CausalLM.from_preset(args.preset, max_seq_len=max(args.seq_len, 8192)).to(device)
    model.fused_loss = True
    model.gradient_checkpointing = args.checkpointing
    wrapped = model  # one GPU: the plain model, the baseline of the efficiency
    if info.enabled and args.parallel == "fsdp":
        dist_mod.shard_model(model, bf16=True)
    elif info.enabled:
        wrapped = dist_mod.wrap_model(model, info, device, "ddp")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    opt = build_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), device=device)
    vocab = model.config.vocab_size
    g = torch.Generator(device=device).manual_seed(1 + info.rank)
    ids = torch.randint(0, vocab, (args.batch, args.seq_len), device=device, generator=g)

    def step() -> None:
        with autocast:
            loss = wrapped(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        dist_mod.barrier(info)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        dist_mod.barrier(info)
        times.append(start.elapsed_time(end))
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    if info.enabled:
        t = torch.tensor([peak], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        peak = float(t.item())
    step_ms = statistics.median(times)
    tok_per_gpu = args.batch * args.seq_len / (step_ms / 1e3)
    row = {"preset": args.preset, "parallel": args.parallel, "world": info.world_size,
           "seq_len": args.seq_len, "batch_per_gpu": args.batch, "checkpointing": args.checkpointing,
           "step_ms": step_ms, "tokens_per_s_per_gpu": tok_per_gpu,
           "tokens_per_s": tok_per_gpu * info.world_size, "peak_gib": peak,
           "params": sum(p.numel() for p in model.parameters()),  # DTensors report their global size
           "gpu": torch.cuda.get_device_name(device)}
    if info.is_main:
        print(json.dumps(row))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    dist_mod.cleanup(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
