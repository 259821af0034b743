"""Fill Triton's on-disk kernel cache for the `ssd-op` case with parallel processes before anything is timed.

On a fresh machine mamba_ssm's SSD autotunes about 190 launch configurations over ~25 kernels, and Triton
compiles each one the first time it is benchmarked, one after another: in one measured run its first forward
call
alone had not returned after ~140 s, and forward + backward would not fit one 600 s command. Compilation
is CPU work, and Triton keeps every compiled kernel on disk (keyed by source, specialisation and launch
settings), so `warm(n)` starts n worker processes; worker w keeps only every n-th configuration of each
autotuned kernel (mamba_ssm's and fla's) and runs the peers' forward and forward + backward once at the
benchmark's three argument specialisations (batch 32, 8 and 1: divisible by 16, not, and 1). Together the
workers compile every configuration once, in parallel; worker 0 also runs our SSD. The timed process then
finds every kernel on disk and only benchmarks the configurations (autotuning itself is unchanged). Nothing
is timed while the workers run; their own timings are thrown away.

    python benchmarks/peer_warm.py --worker W --workers N      (one worker; `warm` starts them)
    python benchmarks/peer_warm.py --worker 0 --workers 0      (the probe: all configurations, first shape)
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((32, 1024), (8, 4096), (1, 32768))  # (batch, L) at 32K tokens: the three specialisations of batch
PEER_PACKAGES = ("mamba_ssm.ops.triton", "fla.ops.common", "fla.ops.simple_gla", "fla.ops.utils")


def autotuners(packages=PEER_PACKAGES) -> list[Any]:
    """Every triton Autotuner defined at module level in the given packages (those that import)."""
    from triton.runtime.autotuner import Autotuner

    found: dict[int, Any] = {}
    for pkg_name in packages:
        try:
            pkg = importlib.import_module(pkg_name)
        except Exception as err:  # noqa: BLE001 - a missing peer is skipped
            print(f"peer_warm: {pkg_name} unavailable: {err!r}")
            continue
        mods = [pkg]
        for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            try:
                mods.append(importlib.import_module(f"{pkg_name}.{info.name}"))
            except Exception as err:  # noqa: BLE001
                print(f"peer_warm: {pkg_name}.{info.name} skipped: {err!r}")
        for mod in mods:
            for obj in vars(mod).values():
                if isinstance(obj, Autotuner):
                    found[id(obj)] = obj
    return list(found.values())


def keep_share(tuners: list[Any], worker: int, workers: int) -> int:
    """Worker `worker` of `workers` keeps configurations worker, worker + workers, ... of each autotuner
    (a kernel with fewer configurations than workers: the one at worker mod count). Returns how many kept."""
    kept = 0
    for t in tuners:
        cfgs = list(t.configs)
        mine = cfgs[worker::workers] or cfgs[worker % len(cfgs):worker % len(cfgs) + 1]
        t.configs = mine
        kept += len(mine)
    return kept


def run_worker(worker: int, workers: int, shapes=SHAPES) -> None:
    """workers = 0: the probe (every configuration, first shape only)."""
    import torch

    sys.path[:0] = [str(ROOT / "src"), str(ROOT / ".peers"), str(ROOT / "benchmarks")]
    if workers > 0:
        tuners = autotuners()
        kept = keep_share(tuners, worker, workers)
        print(f"peer_warm worker {worker}/{workers}: {len(tuners)} autotuned kernels, {kept} configurations")
    from peer_ops import load_fla, ssd_as_simple_gla

    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as mamba
    except Exception as err:  # noqa: BLE001
        print(f"peer_warm: mamba_ssm unavailable: {err!r}")
        mamba = None
    fla = load_fla()
    impls = {"mamba_ssm": mamba}
    if worker == 0 and workers > 0:  # ours compiles beside the peers (not in the probe)
        from transmamba.ops.ssd.triton import ssd_triton

        impls["ours"] = ssd_triton
    h, p, g, n = 64, 64, 1, 128
    for b, l in shapes:
        dev = "cuda"
        x = torch.randn(b, l, h, p, device=dev, dtype=torch.bfloat16, requires_grad=True)
        dt = (torch.randn(b, l, h, device=dev) * 0.5 - 1.0).requires_grad_()
        A = (-torch.rand(h, device=dev) - 0.5).requires_grad_()
        B = torch.randn(b, l, g, n, device=dev, dtype=torch.bfloat16, requires_grad=True)
        C = torch.randn(b, l, g, n, device=dev, dtype=torch.bfloat16, requires_grad=True)
        D = torch.randn(h, device=dev, requires_grad=True)
        bias = (torch.randn(h, device=dev) * 0.3).requires_grad_()
        kw = dict(chunk_size=256, D=D, dt_bias=bias, dt_softplus=True)
        for name, fn in impls.items():
            if fn is None:
                continue
            t0 = time.time()
            try:
                with torch.no_grad():
                    fn(x, dt, A, B, C, **kw)
                fn(x, dt, A, B, C, **kw).float().sum().backward()
                torch.cuda.synchronize()
            except Exception as err:  # noqa: BLE001
                print(f"peer_warm worker {worker}: {name} b={b} failed: {err!r}"[:300])
            print(f"peer_warm worker {worker}: {name} b={b} L={l} {time.time() - t0:.1f} s", flush=True)
        if fla is not None:
            t0 = time.time()
            try:
                with torch.no_grad():
                    q, k, v, gg = ssd_as_simple_gla(x, dt, A, B, C, dt_bias=bias, dt_softplus=True)
                    fla(q, k, v, gg, scale=1.0)
                torch.cuda.synchronize()
            except Exception as err:  # noqa: BLE001
                print(f"peer_warm worker {worker}: fla b={b} failed: {err!r}"[:300])
            print(f"peer_warm worker {worker}: fla b={b} L={l} {time.time() - t0:.1f} s", flush=True)
        del x, dt, A, B, C, D, bias
        torch.cuda.empty_cache()


def warm(workers: int, timeout_s: float, log=print, probe_s: float = 30.0) -> dict[str, Any]:
    """First a probe: one process runs the peers at the first shape with every configuration; if it ends
    within probe_s the kernels (and, with TRITON_CACHE_AUTOTUNING=1, the autotune results) are already on
    disk and nothing more is done. Otherwise start the workers and wait at most timeout_s (then kill the
    rest). One row: seconds, return codes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / ".peers"), env.get("PYTHONPATH", "")])
    me = str(Path(__file__).resolve())
    t0 = time.time()
    probe = subprocess.Popen([sys.executable, me, "--worker", "0", "--workers", "0"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = probe.communicate(timeout=probe_s)
        probe_ok = probe.returncode == 0
    except subprocess.TimeoutExpired:
        probe.kill()
        out, _ = probe.communicate()
        probe_ok = False
    probe_secs = time.time() - t0
    log(f"  peer_warm probe: rc={probe.returncode} in {probe_secs:.1f} s")
    if probe_ok:
        return {"workers": 0, "probe_s": probe_secs, "seconds": probe_secs, "probe_tail": (out or "")[-1500:],
                "note": "probe finished in time: kernels already cached, no workers started"}
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, me, "--worker", str(w), "--workers", str(workers)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for w in range(workers)]
    rcs: list[int | None] = []
    outs: list[str] = []
    for pr in procs:
        left = max(1.0, timeout_s - (time.time() - t0))
        try:
            out, _ = pr.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            pr.kill()
            out, _ = pr.communicate()
        rcs.append(pr.returncode)
        outs.append(out or "")
    secs = time.time() - t0
    for out in outs[:2]:
        for line in out.splitlines()[-8:]:
            log("  " + line)
    return {"workers": workers, "probe_s": probe_secs, "seconds": secs + probe_secs, "timeout_s": timeout_s,
            "returncodes": rcs,
            "timed_out": sum(1 for r in rcs if r not in (0,)),
            "worker0_tail": "\n".join(outs[0].splitlines()[-12:]) if outs else ""}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True)
    a = ap.parse_args()
    run_worker(a.worker, a.workers, SHAPES if a.workers > 0 else SHAPES[:1])
