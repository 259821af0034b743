"""Helpers every benchmark case shares: timing, the measured ceilings, environment metadata, model building,
peers, and JSON that carries no machine paths. Nothing here touches CUDA or imports Triton at import time."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


# ---- timing --------------------------------------------------------------------------------------------


def bench_ms(fn: Callable[[], Any], warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of fn over CUDA events (triton's do_bench: warm-up and repeats in ms)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def sync(device: torch.device | str | None = None) -> None:
    """Wait for the device (a no-op on the CPU)."""
    if torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(fn: Callable[[], Any], n: int, device: torch.device | str | None = None) -> float:
    """Wall-clock ms per call of fn over n calls, the device synchronised before and after (host overhead
    counts)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n * 1e3


def median_s(fn: Callable[[], Any], iters: int, warmup: int = 0,
             device: torch.device | str | None = None) -> float:
    """Median wall seconds of one synchronised call of fn over iters calls, after warmup calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def event_ms(fn: Callable[[], Any], n: int) -> list[float]:
    """CUDA-event milliseconds of each of n calls of fn (whole training steps: one event pair each)."""
    times = []
    for _ in range(n):
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        fn()
        t1.record()
        t1.synchronize()
        times.append(t0.elapsed_time(t1))
    return times


def nograd(fn: Callable[[], Any]) -> Any:
    with torch.no_grad():
        return fn()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference |a - b| / |b| in fp64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def saved_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves for backward while fn runs (`saved_tensors_hooks`)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


# ---- the floors' rates and the environment --------------------------------------------------------------

_CEIL: dict[str, float] = {}


def ceilings() -> dict[str, float]:
    """Measured copy bandwidth (bytes read + written per s) and bf16 matmul FLOP/s, cached per process."""
    if not _CEIL:
        n = 1 << 30  # 1 GiB
        src = torch.randn(n // 4, device="cuda")
        dst = torch.empty_like(src)
        ms = bench_ms(lambda: dst.copy_(src))
        _CEIL["copy_GBps"] = 2 * n / ms / 1e6
        m = 8192
        a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        ms = bench_ms(lambda: a @ b)
        _CEIL["bf16_TFLOPs"] = 2 * m**3 / ms / 1e9
        del src, dst, a, b
        torch.cuda.empty_cache()
    return dict(_CEIL)


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


def spec_bf16_flops() -> float | None:
    """The GPU's datasheet dense bf16 tensor-core rate (FLOP/s), for MFU (None: unknown)."""
    name = gpu_name()
    if "H100" in name or "H200" in name:
        return 756e12 if "PCIe" in name else 989.4e12
    if "A100" in name:
        return 312e12
    return None


def env_meta() -> dict[str, Any]:
    """Where a result was measured: GPU (or CPU), library versions, CPU count."""
    try:
        import triton

        tv = triton.__version__
    except Exception:  # noqa: BLE001 - CPU-only environments
        tv = None
    return {"gpu": gpu_name(), "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "triton": tv, "cuda": torch.version.cuda,
            "python": platform.python_version()}


# ---- models and peers ------------------------------------------------------------------------------------


def build_lm(preset: str, over: dict, max_len: int, device: str | torch.device = "cuda",
             dtype: torch.dtype | None = torch.bfloat16, seed: int = 0):
    """A CausalLM of `preset` (with `over`), built directly on `device` (fast init), in `dtype`, eval mode."""
    from transmamba.models import CausalLM, get_preset

    torch.manual_seed(seed)
    with torch.device(device):
        model = CausalLM(get_preset(preset, max_seq_len=max_len, **over))
    return (model if dtype is None else model.to(dtype)).eval()


def load_mamba_ssm() -> dict[str, Any] | None:
    """mamba_ssm's Triton SSD kernels from .peers/ (None when absent or broken)."""
    peers = str(ROOT / ".peers")
    if peers not in sys.path:
        sys.path.insert(0, peers)
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as err:  # noqa: BLE001 - peers are optional
        print(f"mamba_ssm peer unavailable: {err!r}")
        return None
    return {"chunk_scan_combined": mamba_chunk_scan_combined,
            "selective_state_update": selective_state_update}


def load_fla() -> Callable[..., Any] | None:
    """fla's `chunk_simple_gla` (None, with the reason printed, when fla is absent or fails to import)."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as err:  # noqa: BLE001 - the peer is optional
        print(f"fla peer unavailable: {err!r}")
        return None
    return chunk_simple_gla


# ---- output --------------------------------------------------------------------------------------------


def show(row: dict[str, Any], prefix: str = "") -> None:
    """One row as a JSON line on stdout (floats rounded), as a case makes it."""
    print(prefix + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
          flush=True)


_MACHINE_PATH = re.compile(r"(?<![\w.])/(?:root|work|farm|home|tmp|usr|opt|scratch)(?:/[^\s\"'\\:,()]+)+")


def scrub(text: str) -> str:
    """Machine paths out of text meant for the repository: the checkout's prefix dropped, any other absolute
    path under /root, /work, /tmp, ... cut to `<path>/<its last component>` (results get committed)."""
    root = str(ROOT)
    text = text.replace(root + "/", "").replace(root, ".")
    return _MACHINE_PATH.sub(lambda m: "<path>/" + m.group(0).rsplit("/", 1)[-1], text)


def write_json(path: Path, data: Any) -> None:
    """Write atomically (a kill mid-write leaves the previous file), machine paths scrubbed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(scrub(json.dumps(data, indent=1, default=str)) + "\n")
    os.replace(tmp, path)


def shown_out(argv: list[str]) -> list[str]:
    """The command as recorded: `--out` outside the checkout becomes `--out OUT` (no machine paths)."""
    out = list(argv)
    for i, a in enumerate(out):
        val = out[i + 1] if a == "--out" and i + 1 < len(out) else a[6:] if a.startswith("--out=") else None
        if val is None:
            continue
        try:
            shown = str(Path(val).resolve().relative_to(ROOT))
        except ValueError:
            shown = "OUT"
        if a == "--out":
            out[i + 1] = shown
        else:
            out[i] = "--out=" + shown
    return out
