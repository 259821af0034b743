"""Smoke test of the folders outside the package: every script of experiments/ (paper reproductions and
studies) and benchmarks/ imports without running anything, and the benchmark runner builds its parser.
Nothing here measures or trains; the package's own tests live beside it."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "experiments").glob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_experiment_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(f"experiments_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # scripts run only under __main__
    assert mod.__doc__, f"{path.name} says what it is in its docstring"


def test_benchmark_runner_parser():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import run

    args = run.build_parser().parse_args(["--cases", "pointcloud", "--pc-groups-cpu", "16", "--threads", "1"])
    assert args.pc_groups_cpu == "16" and set(run.CASES) >= {"ssd-op", "train-step", "decode", "generation"}
