"""`transmamba bench`: run the benchmark cases of `benchmarks/run.py` (a checkout's runner).

    transmamba bench --list
    transmamba bench --cases ceilings,ssd-op --out runs/bench
    transmamba bench --cases train-step --train-lengths 2048,8192
    transmamba bench --suite targets --out DIR --time-budget 520 --resume   (every headline number, one run)

The runner lives in the source checkout (`benchmarks/run.py`, beside `src/`), not in the installed package;
this command finds it from the current directory or from the package's source location, or takes
`--runner PATH`. The options below are handed to the runner as given (see `--list` and
`python benchmarks/run.py --help`, which also lists the options of the point-cloud, diffusion, generation
and serving cases). The kernel, training and decode cases need a CUDA GPU (and triton).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from transmamba.commands._args import float_arg, int_arg
from transmamba.errors import UsageError

# options handed to benchmarks/run.py when given (names, types and meaning are the runner's)
_PASS_THROUGH = [
    ("--cases", str, "comma-separated cases, e.g. ceilings,ssd-op,ssd-decode,train-step,decode,generation"),
    ("--out", str, "folder for the JSON/CSV/MD/PNG results"),
    ("--lengths", str, "ssd-op sequence lengths, comma-separated"),
    ("--tokens", int, "ssd-op tokens per call (batch = tokens / L)"),
    ("--torch-max-len", int, "ssd-op: run the torch reference up to this L"),
    ("--train-lengths", str, "train-step sequence lengths, comma-separated"),
    ("--train-tokens", int, "train-step tokens per step"),
    ("--train-models", str, "train-step models, comma-separated (see the runner's --help)"),
    ("--decode-contexts", str, "decode context lengths, comma-separated"),
    ("--decode-batches", str, "decode batch sizes, comma-separated"),
    ("--decode-models", str, "decode models, comma-separated (default: all four)"),
    ("--decode-target-ms", float, "decode: wall-clock ms spent on each timing"),
    ("--suite", str, "run a whole suite in one process (targets: every headline number, OUT/targets.*)"),
    ("--time-budget", float, "--suite: seconds this process may take (later units wait for a --resume run)"),
    ("--suite-units", str, "--suite: only these units, comma-separated"),
    ("--warm-workers", int, "--suite: processes compiling the peers' kernels before timing"),
    ("--warm-timeout", float, "--suite: seconds before those processes are stopped"),
]
# on/off options handed to the runner when set
_FLAGS = [
    ("--resume", "--suite: keep the units already done in OUT/targets.json and run the rest"),
    ("--report-only", "--suite: rebuild OUT/targets.md and the case files from OUT/targets.json (no GPU)"),
]


def _find_runner(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    here = Path.cwd()
    candidates = [here / "benchmarks" / "run.py", *(p / "benchmarks" / "run.py" for p in here.parents)]
    import transmamba

    candidates.append(Path(transmamba.__file__).resolve().parents[2] / "benchmarks" / "run.py")
    for c in candidates:
        if c.is_file():
            return c
    return None


def _run(args: argparse.Namespace) -> int:
    runner = _find_runner(args.runner)
    if runner is None or not runner.is_file():
        raise UsageError(f"{runner or 'benchmarks/run.py'} not found; run from a source checkout or pass "
                         "--runner PATH")
    spec = importlib.util.spec_from_file_location("transmamba_bench_runner", runner)
    if runner.suffix != ".py" or spec is None or spec.loader is None:
        raise UsageError(f"--runner {runner} is not a Python file; pass the checkout's benchmarks/run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the runner look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the runner is outside the package: any failure to load it is the path's
        raise UsageError(f"--runner {runner} could not be loaded ({type(err).__name__}: {err}); pass the "
                         "checkout's benchmarks/run.py") from None
    if not callable(getattr(module, "main", None)):
        raise UsageError(f"--runner {runner} has no main(argv); pass the checkout's benchmarks/run.py")
    argv: list[str] = []
    if args.list:
        argv.append("--list")
    for flag, _, _ in _PASS_THROUGH:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            argv += [flag, str(value)]
    argv += [flag for flag, _ in _FLAGS if getattr(args, flag.lstrip("-").replace("-", "_"))]
    return int(module.main(argv) or 0)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="GPU benchmarks: SSD kernels vs mamba_ssm, training step, decode, TransPoint sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--list", action="store_true", help="list the benchmark cases and exit")
    p.add_argument("--runner", default=None,
                   help="path of benchmarks/run.py (default: found from the checkout)")
    for flag, typ, help_ in _PASS_THROUGH:
        typ = {int: int_arg(1), float: float_arg(0, lo_open=True)}.get(typ, typ)
        p.add_argument(flag, type=typ, default=None, help=help_ + " (default: the runner's)")
    for flag, help_ in _FLAGS:
        p.add_argument(flag, action="store_true", help=help_)
    p.set_defaults(func=_run)
