"""`transmamba bench`: the command finds the checkout's runner and lists its cases (no GPU needed)."""

from transmamba.cli import main


def test_bench_list(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("ceilings", "ssd-op", "ssd-decode", "train-step", "decode", "transpoint-sweep"):
        assert name in out


def test_bench_missing_runner(capsys, tmp_path):
    assert main(["bench", "--runner", str(tmp_path / "nope.py"), "--list"]) == 2


def test_bench_options_reach_the_runner(monkeypatch, capsys):
    """Runner options given to `transmamba bench` are handed on (here the runner stops: no GPU)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--cases", "ssd-op", "--lengths", "1024", "--tokens", "2048"]) == 2
    assert "need a CUDA GPU" in capsys.readouterr().err


def test_runner_writes_json_csv_png(tmp_path):
    """The runner's output step on made-up rows (no GPU): JSON with meta, CSV with every key, a PNG."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("tm_runner_test", path)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    rows = [{"L": L, "ours_fwd_ms": 1.0, "mamba_ssm_fwd_ms": 1.2, "fwd_floor_ms": 0.2, "ours_fwdbwd_ms": 5.0,
             "fwdbwd_floor_ms": 0.6} for L in (1024, 2048)]
    runner.write_outputs("ssd-op", rows, tmp_path, {"gpu": "none", "command": "test"})
    data = json.loads((tmp_path / "ssd-op.json").read_text())
    assert data["meta"]["command"] == "test" and len(data["rows"]) == 2
    assert (tmp_path / "ssd-op.csv").read_text().splitlines()[0].startswith("L,")
    assert (tmp_path / "ssd-op.png").stat().st_size > 1000
    floor = runner.ssd_floor(1, 32768, 64, 64, 1, 128, 256, {"copy_GBps": 3000.0, "bf16_TFLOPs": 750.0})
    assert abs(floor["fwd_bytes"] - 562036736) < 1 and floor["fwd_floor_ms"] > 0.18
