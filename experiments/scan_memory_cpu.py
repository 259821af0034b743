"""CPU memory and time per training step against sequence length: the Mamba-1 scan, a Mamba-1 layer (with
Hugging Face transformers' Mamba slow path as a peer), a Mambaformer and jamba-small, before and after the
memory-bounded scan.

    python experiments/scan_memory_cpu.py --out runs/scan-memory-cpu [--before REV] [--threads 1]
        [--cases scan,mamba1-layer,mambaformer,jamba-small,jamba-small-20] [--lengths 256,1024,4096,16384]

Every measurement runs in its own child process (this machine is shared, so only per-process numbers mean
anything): peak RSS (`ru_maxrss`) and the RSS before the first step, CPU seconds (user + sys of the
child) and wall seconds per step, median over the timed steps after one warm-up step. Children run under
an address-space cap (`--mem-cap-gb`, default 8): a case that needs more fails with MemoryError and is
reported as such instead of taking the machine down.

"before" imports the package as it was at git revision `--before` (exported with `git archive` into
`<out>/src-<rev>`, an ignored folder); "after" imports this tree's `src/`; "hf" is transformers'
`MambaMixer` without mamba_ssm, i.e. its pure-torch path, which materialises (b, d, l, n) discretised A and
B·u and scans them step by step (transformers is installed only in the benchmark environment).

Cases (b = batch):
  scan            selective_scan forward + backward, b 1, d 1024, n 16 (jamba-small's Mamba-1 width), D, z,
                  delta_bias + softplus
  mamba1-layer    one Mamba-1 mixer at d_model 512 (d_inner 1024, n 16), forward + backward, b 1
  mambaformer     the forecast command's default model (d_model 32, 4 heads, Mamba-1), b 8, MSE + Adam
  jamba-small     CausalLM jamba-small (255M parameters), b 1, cross-entropy (+ MoE aux loss) + SGD step
  jamba-small-20  jamba-small, 20 SGD steps at 2048 tokens (b 1), totals
Results: <out>/results.jsonl (one line per child) and <out>/report.md (the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "918392a"  # the last commit with the (b, d, l, n) plain-autograd CPU scan
CASES = ("scan", "mamba1-layer", "mambaformer", "jamba-small", "jamba-small-20")
IMPLS = {"scan": ("before", "after"), "mamba1-layer": ("before", "after", "hf"),
         "mambaformer": ("before", "after"), "jamba-small": ("before", "after"),
         "jamba-small-20": ("after",)}


# ------------------------------------------------------------------------------------------- child side


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _scan_step(l: int):
    import torch

    from transmamba.ops.selective_scan import selective_scan

    g = torch.Generator().manual_seed(0)
    b, d, n = 1, 1024, 16
    t = dict(u=torch.randn(b, d, l, generator=g), delta=torch.randn(b, d, l, generator=g) * 0.5,
             A=-torch.rand(d, n, generator=g) - 0.1, B=torch.randn(b, n, l, generator=g),
             C=torch.randn(b, n, l, generator=g), D=torch.randn(d, generator=g),
             z=torch.randn(b, d, l, generator=g), delta_bias=torch.randn(d, generator=g) * 0.5)
    for v in t.values():
        v.requires_grad_(True)

    def step():
        y = selective_scan(**t, delta_softplus=True)
        y.backward(torch.ones_like(y))
        for v in t.values():
            v.grad = None
    return step


def _mamba1_layer_step(l: int, impl: str):
    import torch

    torch.manual_seed(0)
    if impl == "hf":
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer

        cfg = MambaConfig(hidden_size=512, state_size=16, expand=2, conv_kernel=4, use_mambapy=False)
        layer = MambaMixer(cfg, layer_idx=0)  # no mamba_ssm / kernels here: its torch path runs
        fwd = layer
    else:
        from transmamba.layers.mamba1 import Mamba1

        layer = Mamba1(512, d_state=16, d_conv=4, expand=2)
        fwd = layer
    x = torch.randn(1, l, 512, requires_grad=True)

    def step():
        fwd(x).sum().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None
    return step


def _mambaformer_step(l: int, impl: str):
    import torch

    try:
        from transmamba.forecasting.model import Mambaformer, MambaformerConfig
    except ModuleNotFoundError:  # the tree before the forecasting package
        from transmamba.models.mambaformer import Mambaformer, MambaformerConfig
    torch.manual_seed(0)
    model = Mambaformer(MambaformerConfig(n_vars=7, n_time_features=4, d_model=32, n_heads=4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, mark, target = torch.randn(8, l, 7), torch.rand(8, l, 4) - 0.5, torch.randn(8, l, 7)

    def step():
        loss = torch.nn.functional.mse_loss(model(x, mark), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _jamba_step(l: int):
    import torch

    from transmamba.models import CausalLM

    torch.manual_seed(0)
    model = CausalLM.from_preset("jamba-small")
    # plain SGD: no optimizer state, so the RSS is weights + gradients + activations (AdamW would add two
    # fp32 copies of the 255M weights, 2 GB, independent of length)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (1, l))

    def step():
        loss = model(ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def child(case: str, impl: str, length: int, steps: int, threads: int, progress: str | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    if case == "scan":
        step = _scan_step(length)
    elif case == "mamba1-layer":
        step = _mamba1_layer_step(length, impl)
    elif case == "mambaformer":
        step = _mambaformer_step(length, impl)
    else:
        step = _jamba_step(length)
    rss0 = _rss_gb()
    walls, cpus = [], []
    t_all, c_all = time.perf_counter(), _cpu_s()
    for i in range(steps + (0 if case == "jamba-small-20" else 1)):  # 20 steps: all counted
        t, c = time.perf_counter(), _cpu_s()
        step()
        walls.append(time.perf_counter() - t)
        cpus.append(_cpu_s() - c)
        if progress:  # one line per step, so a long run that is stopped still shows what it did
            with open(progress, "a") as fh:
                fh.write(json.dumps({"case": case, "impl": impl, "length": length, "step": i + 1,
                                     "wall_s": round(walls[-1], 2), "cpu_s": round(cpus[-1], 2),
                                     "peak_rss_gb": round(_rss_gb(), 3)}) + "\n")
        if case != "jamba-small-20" and i == 0:
            walls.clear()
            cpus.clear()
    row = {"case": case, "impl": impl, "length": length, "threads": threads, "steps": len(walls),
           "wall_s_per_step": statistics.median(walls), "cpu_s_per_step": statistics.median(cpus),
           "rss_before_gb": round(rss0, 3), "peak_rss_gb": round(_rss_gb(), 3),
           "torch": torch.__version__}
    if case == "jamba-small-20":
        row.update(total_wall_s=round(time.perf_counter() - t_all, 1), total_cpu_s=round(_cpu_s() - c_all, 1))
    return row


# ------------------------------------------------------------------------------------------ parent side


def export_before(rev: str, out: Path) -> Path:
    """`git archive REV src` into out/src-REV (once); returns the folder to put on PYTHONPATH."""
    dest = out / f"src-{rev}"
    if not (dest / "src" / "transmamba").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def run_child(case, impl, length, args, src: Path) -> dict:
    cap = int(args.mem_cap_gb * 1e9)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, impl, str(length),
           "--steps", str(args.steps), "--threads", str(args.threads),
           "--progress", str(Path(args.out) / "progress.jsonl")]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=limit,
                          timeout=args.timeout)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    oom = "MemoryError" in proc.stderr or "can't allocate memory" in proc.stderr or proc.returncode == -9
    return {"case": case, "impl": impl, "length": length, "threads": args.threads,
            "error": f"out of memory under the {args.mem_cap_gb:g} GB cap" if oom else tail,
            "wall_s_total": round(time.time() - t0, 1)}


def report(rows: list[dict]) -> str:
    lines = []
    for case in CASES:
        rs = [r for r in rows if r["case"] == case]
        if not rs:
            continue
        lines += [f"### {case}", "", "| impl | length | peak RSS (GB) | RSS before step (GB) | wall s/step | "
                  "CPU s/step |", "|---|---:|---:|---:|---:|---:|"]
        for r in sorted(rs, key=lambda r: (r["impl"], r["length"])):
            if "error" in r:
                lines.append(f"| {r['impl']} | {r['length']} | {r['error']} | | | |")
            else:
                lines.append(f"| {r['impl']} | {r['length']} | {r['peak_rss_gb']:.2f} | "
                             f"{r['rss_before_gb']:.2f} | {r['wall_s_per_step']:.2f} | "
                             f"{r['cpu_s_per_step']:.2f} |")
                if "total_wall_s" in r:
                    lines.append(f"| ({r['steps']} steps in total) | | | | {r['total_wall_s']:.0f} s | "
                                 f"{r['total_cpu_s']:.0f} s |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/scan-memory-cpu")
    p.add_argument("--before", default=DEFAULT_BEFORE, help="git revision of the 'before' tree")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--impls", default="before,after,hf")
    p.add_argument("--lengths", default="256,1024,4096,16384")
    p.add_argument("--jamba-lengths", default="256,1024,2048")
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up (default 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mem-cap-gb", type=float, default=8.0)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per child")
    p.add_argument("--child", nargs=3, metavar=("CASE", "IMPL", "LENGTH"), help=argparse.SUPPRESS)
    p.add_argument("--progress", default=None, help=argparse.SUPPRESS)
    p.add_argument("--report-only", action="store_true", help="rewrite report.md from results.jsonl")
    args = p.parse_args()
    if args.child:
        case, impl, length = args.child
        print(json.dumps(child(case, impl, int(length), args.steps, args.threads, args.progress)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if not args.report_only:
        impls = args.impls.split(",")
        for case in args.cases.split(","):
            if case == "jamba-small-20":
                lengths = [2048]
                steps = 20
            elif case == "jamba-small":
                lengths, steps = [int(x) for x in args.jamba_lengths.split(",")], args.steps
            else:
                lengths, steps = [int(x) for x in args.lengths.split(",")], args.steps
            for impl in IMPLS[case]:
                if impl not in impls:
                    continue
                src = export_before(args.before, out) if impl == "before" else ROOT / "src"
                for length in lengths:
                    a = argparse.Namespace(**{**vars(args), "steps": steps})
                    row = run_child(case, impl, length, a, src)
                    print(json.dumps(row), flush=True)
                    with results.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    if "error" in row:  # longer sequences will not fit either
                        break
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    text = report(rows)
    (out / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
