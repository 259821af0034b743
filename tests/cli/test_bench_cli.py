"""`transmamba bench`: the command finds the checkout's runner (benchmarks/run.py), lists its cases, hands its
options on, and rebuilds a suite's report without a GPU. The benchmarks themselves are not the package: only
this smoke test touches them."""

import json

from transmamba.cli import main


def test_bench_list(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("ceilings", "ssd-op", "ssd-decode", "train-step", "decode", "transpoint-sweep", "generation",
                 "pointcloud", "diffusion-scaling", "serve-load"):
        assert name in out


def test_bench_missing_runner(capsys, tmp_path):
    assert main(["bench", "--runner", str(tmp_path / "nope.py"), "--list"]) == 2


def test_bench_options_reach_the_runner(monkeypatch, capsys):
    """Runner options given to `transmamba bench` are handed on (here the runner stops: no GPU)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--cases", "ssd-op", "--lengths", "1024", "--tokens", "2048"]) == 2
    assert "need a CUDA GPU" in capsys.readouterr().err


def test_bench_report_only(tmp_path):
    """`--suite targets --report-only` rebuilds OUT/targets.md and the case files from OUT/targets.json."""
    ssd = [{"L": 1024, "batch": 32, "fwd_floor_ms": 0.2, "fwdbwd_floor_ms": 0.6,
            "ours_fwd_ms": 0.3, "ours_fwdbwd_ms": 2.0, "mamba_ssm_fwd_ms": 1.3, "mamba_ssm_fwdbwd_ms": 5.0}]
    train = [{"model": m, "T": 8192, "batch": 4, "step_ms": 400.0, "tokens_per_s": v, "mfu": 0.4}
             for m, v in (("transmamba-400m", 80e3), ("transformer-400m-eq", 40e3))]
    proc = {"id": 1, "pid": 1, "command": "python benchmarks/run.py --suite targets", "units": []}
    units = {"ssd-op": {"case": "ssd-op", "status": "done", "process": 1, "rows": ssd},
             "train-step-a": {"case": "train-step", "status": "done", "process": 1, "rows": train},
             "decode-a": {"case": "decode", "status": "failed", "process": 1, "error": "boom"}}
    data = {"suite": "targets", "meta": {"gpu": "Test GPU"}, "processes": [proc], "units": units}
    (tmp_path / "targets.json").write_text(json.dumps(data))
    assert main(["bench", "--suite", "targets", "--out", str(tmp_path), "--report-only"]) == 0
    md = (tmp_path / "targets.md").read_text()
    for s in ("## Targets", "Test GPU", "met", "not run"):
        assert s in md, s
    rows = json.loads((tmp_path / "train-step.json").read_text())["rows"]
    assert len(rows) == 2 and (tmp_path / "ssd-op.csv").read_text().startswith("L,")
