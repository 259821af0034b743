"""Training-step memory and images/s against resolution (token count): Dimba vs attention-only vs Mamba-only.

    python benchmarks/diffusion_scaling.py                      # CPU, and the GPU too when there is one
    python benchmarks/diffusion_scaling.py --out DIR      # GPU cases: Dimba-L/2 width, 256-4096 tokens

Models: Dimba (``--d-model``, ``--depth`` attention blocks each followed by one BiMamba block, Mamba-1) and
the attention-only (DiT/PixArt) and Mamba-only (DiS-style) networks with the depth that matches its parameter
count (``equal_params_config``). Inputs: 4-channel latents of side ``size`` (patch 2: T = (size/2)² tokens),
class-conditional, batch ``--batch``. A training step: forward, loss (ε-MSE + VLB), backward, AdamW.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` over one training step after warm-up (weights,
gradients, AdamW state and activations); on the CPU the same parts counted exactly: parameter bytes × 4
(weights, gradients, two AdamW moments) plus the bytes of the distinct tensors autograd saves for backward
(``saved_tensors_hooks``) — the CPU allocator has no peak counter. images/s: training images per second
(median of ``--iters`` timed steps after 2 warm-ups; CUDA events on the GPU) and sampling images/s (one
guided forward pass = 2 network evaluations per image per step, reported per network evaluation).
A case that runs out of memory or over ``--max-seconds`` is reported as such, not dropped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from transmamba.diffusion.model import Dimba, DimbaConfig, count_parameters, equal_params_config
from transmamba.diffusion.schedule import diffusion_loss, make_train_scheduler


def saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_case(cfg: DimbaConfig, size: int, batch: int, device: torch.device, iters: int, dtype) -> dict:
    from dataclasses import replace

    cfg = replace(cfg, image_size=size)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device (a 1 B model takes minutes on the CPU)
        model = Dimba(cfg)
    n_params = model.num_parameters()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = make_train_scheduler("linear", 1000, cfg.learn_sigma)
    x = torch.randn(batch, cfg.in_channels, size, size, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)
    autocast = (
        torch.autocast(device.type, dtype=dtype)
        if dtype != torch.float32
        else torch.autocast(device.type, enabled=False)
    )

    def step():
        with autocast:
            loss, _ = diffusion_loss(model, sched, x, y)
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
        times = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            torch.cuda.synchronize(device)
            times.append(a.elapsed_time(b) / 1e3)
    else:

        def fwd_loss():
            with autocast:
                loss, _ = diffusion_loss(model, sched, x, y)
            return loss

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
        _sync(device)
        ft = []
        for _ in range(iters):
            t0 = time.perf_counter()
            model(x, t, y)
            _sync(device)
            ft.append(time.perf_counter() - t0)
    res["forward_img_s"] = batch / statistics.median(ft)
    model = opt = None  # free before the next case
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped without a GPU")
    p.add_argument("--d-model", type=int, default=None, help="width (default 128 on CPU, 1152 on CUDA)")
    p.add_argument("--depth", type=int, default=None, help="Dimba depth (default 2 on CPU, 28 on CUDA)")
    p.add_argument("--n-heads", type=int, default=None, help="heads (default 4 on CPU, 16 on CUDA)")
    p.add_argument(
        "--sizes",
        default=None,
        help="latent sides, comma list (default 8,16,32 on CPU; 32,64,128 on CUDA)",
    )
    p.add_argument("--batch", type=int, default=None, help="batch (default 4)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default fp32 CPU, bf16 CUDA")
    p.add_argument("--archs", default="dimba,attention,mamba")
    p.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = p.parse_args(argv)
    rows = []
    for dev_name in args.devices.split(","):
        dev = torch.device(dev_name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: GPU cases skipped")
            continue
        gpu = dev.type == "cuda"
        d = args.d_model or (1152 if gpu else 128)
        depth = args.depth or (28 if gpu else 2)
        heads = args.n_heads or (16 if gpu else 4)
        sizes = [int(s) for s in (args.sizes or ("32,64,128" if gpu else "8,16,32")).split(",")]
        batch = args.batch or 4
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if gpu else "fp32")]
        if not gpu:
            torch.set_num_threads(max(1, torch.get_num_threads()))
        base = DimbaConfig(
            image_size=sizes[0],
            in_channels=4,
            patch_size=2,
            d_model=d,
            depth=depth,
            n_heads=heads,
            num_classes=1000,
            learn_sigma=True,
        )
        cfgs = {"dimba": base}
        for arch in ("attention", "mamba"):
            cfgs[arch] = equal_params_config(base, arch)
        for arch in args.archs.split(","):
            cfg = cfgs[arch]
            for size in sizes:
                name = f"{dev.type} {arch} depth {cfg.depth} size {size}"
                try:
                    r = bench_case(cfg, size, batch, dev, args.iters, dtype)
                except torch.OutOfMemoryError:
                    r = {"tokens": (size // 2) ** 2, "size": size, "error": "out of memory"}
                    torch.cuda.empty_cache()
                except RuntimeError as err:  # keep the other cases; the message goes in the table
                    r = {"tokens": (size // 2) ** 2, "size": size, "error": f"error: {str(err)[:120]}"}
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                r.update(
                    device=dev.type,
                    arch=arch,
                    depth=cfg.depth,
                    d_model=d,
                    batch=batch,
                    dtype=str(dtype).replace("torch.", ""),
                    params=count_parameters(cfg),
                )
                rows.append(r)
                print(
                    name,
                    json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}),
                    flush=True,
                )
    lines = [
        "| device | arch | params (M) | tokens | batch | train-step memory (GiB) | train img/s | "
        "forward img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['device']} | {r['arch']} | {r['params'] / 1e6:.1f} | {r['tokens']} | {r['batch']} | "
                f"{r['error']} | | |"
            )
            continue
        lines.append(
            f"| {r['device']} | {r['arch']} | {r['params'] / 1e6:.1f} | {r['tokens']} | {r['batch']} | "
            f"{r['memory_gib']:.3f} | {r['train_img_s']:.1f} | {r['forward_img_s']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
