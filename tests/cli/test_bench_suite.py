"""The benchmark suite without a GPU: targets and report from synthetic rows, resume, CPU exit."""

from __future__ import annotations

import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import suite  # noqa: E402


def _runner():
    spec = importlib.util.spec_from_file_location("tm_runner_suite_test", BENCH / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _synthetic() -> dict:
    """Rows shaped like the real cases': some targets met, some missed, decode's hybrid row skipped."""
    ssd = [
        {"L": 1024, "batch": 32, "fwd_floor_ms": 0.2, "fwdbwd_floor_ms": 0.6, "ours_fwd_ms": 0.3,
         "ours_fwdbwd_ms": 2.0, "mamba_ssm_fwd_ms": 1.3, "mamba_ssm_fwdbwd_ms": 5.0, "fla_fwd_ms": 1.1,
         "fla_bwd_error": "RuntimeError('refused')", "sdpa_fwd_ms": 0.3, "sdpa_fwdbwd_ms": 1.0,
         "rel_err_fla_vs_ours": 3e-3, "mamba_ssm_first_fwd_s": 90.0},
        {"L": 32768, "batch": 1, "fwd_floor_ms": 0.2, "fwdbwd_floor_ms": 0.6, "ours_fwd_ms": 1.0,
         "ours_fwdbwd_ms": 5.0, "mamba_ssm_error": "OutOfMemoryError()"},
    ]
    train = []
    for model, tps in (("transmamba-400m", (80e3, 80e3)), ("transformer-400m-eq", (40e3, 50e3))):
        for T, v in zip((8192, 32768), tps):
            train.append({"model": model, "T": T, "batch": 32768 // T, "step_ms": 32768 / v * 1e3,
                          "tokens_per_s": v, "mfu": 0.45, "mfu_spec": 0.35 if T == 8192 else 0.42})
    dec = [{"model": "transformer-400m-eq", "context": 32768, "batch": 16, "graph_tokens_per_s": 1000.0,
            "graph_ms": 16.0, "bound_ms": 13.0, "graph_frac_of_bound": 0.81},
           {"model": "transmamba-400m", "context": 32768, "batch": 16, "graph_tokens_per_s": 15000.0,
            "graph_ms": 1.0, "bound_ms": 0.5, "graph_frac_of_bound": 0.5},
           {"model": "mamba2-hybrid-400m", "context": 32768, "batch": 16, "skipped": "does not fit"}]
    ta, tb = train[:1] + train[2:3], train[1:2] + train[3:]
    units = {"ssd-op": {"case": "ssd-op", "status": "done", "process": 1, "rows": ssd},
             "train-step-a": {"case": "train-step", "status": "done", "process": 1, "rows": ta},
             "train-step-b": {"case": "train-step", "status": "done", "process": 2, "rows": tb},
             "decode-a": {"case": "decode", "status": "done", "process": 2, "rows": dec},
             "decode-b": {"case": "decode", "status": "failed", "process": 2, "error": "boom"}}
    procs = [{"id": 1, "pid": 11, "command": "python benchmarks/run.py --suite targets", "units": ["ssd-op"]},
             {"id": 2, "pid": 12, "command": "python benchmarks/run.py --suite targets --resume",
              "units": []}]
    return {"suite": "targets", "meta": {"gpu": "Test GPU"}, "processes": procs, "units": units}


def _by(ts, target, where):
    return next(t for t in ts if t["target"].startswith(target) and t["where"].startswith(where))


def test_targets_from_rows():
    ts = report.targets(_synthetic())
    t = _by(ts, "SSD fwd+bwd", "L = 1024")
    assert t["status"] == "met" and t["value"] == pytest.approx(0.4) and t["shortfall"] is None
    t = _by(ts, "SSD fwd+bwd", "L = 32768")
    assert t["status"] == "not measured" and "OutOfMemory" in t["note"]
    t = _by(ts, "SSD fwd / floor", "L = 32768")
    assert t["status"] == "missed" and t["shortfall"] == pytest.approx(2.5)  # 0.5 / 0.2
    t = _by(ts, "training tokens/s", "T = 8192")
    assert t["status"] == "met" and t["value"] == pytest.approx(2.0)
    t = _by(ts, "training tokens/s", "T = 32768")
    assert t["status"] == "missed" and t["shortfall"] == pytest.approx(2.0 / 1.6)
    assert _by(ts, "MFU", "T = 8192")["status"] == "missed"  # the datasheet figure is the one judged
    assert _by(ts, "MFU", "T = 32768")["status"] == "met"
    t = _by(ts, "decode tokens/s", "transmamba-400m")
    assert t["status"] == "met" and t["value"] == pytest.approx(15.0)
    t = _by(ts, "decode time", "transmamba-400m")
    assert t["status"] == "missed" and t["shortfall"] == pytest.approx(1.6)
    assert _by(ts, "decode tokens/s", "mamba2-hybrid")["status"] == "not measured"


def test_report_sections_and_case_files(tmp_path):
    data = _synthetic()
    md = report.build_report(data)
    for s in ("## Targets", "## (a) Op level", "## (b) Training step", "## (c) Decode",
              "## (d) Training step vs", "**missed**", "refused", "Test GPU", "--resume", "not run"):
        assert s in md, s
    written = {}
    report.write_case_files(data, tmp_path,
                                  lambda name, rows, out, meta: written.update({name: (rows, meta)}))
    assert set(written) == {"ssd-op", "train-step", "decode"}  # decode-b failed: only decode-a's rows
    rows, meta = written["train-step"]
    assert len(rows) == 4 and meta["processes"] == [1, 2] and "--resume" in meta["command"]


def test_split_part():
    assert suite.split_part("1,16,64", (0, 2)) == "1,16"
    assert suite.split_part("1,16,64", (1, 2)) == "64"
    assert suite.split_part("2048", (1, 2)) == ""


def _fake_cases(calls):
    def make(name, fail=False):
        def fn(args):
            calls.append(name)
            if fail:
                raise RuntimeError(f"{name} broke")
            return [{"case": name, "train_lengths": args.train_lengths,
                     "decode_batches": args.decode_batches}]
        return fn, name
    cases = {u.case: make(u.case) for u in suite.SUITES["targets"]}
    cases["scan-op"] = make("scan-op", fail=True)
    return cases


def _args(out, **kw):
    a = Namespace(suite="targets", out=str(out), resume=False, time_budget=None, suite_units=None,
                  train_lengths="2048,8192,16384,32768", decode_batches="1,16,64")
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def _run(args, calls, clock):
    files = []
    rc = suite.run_suite(args, "cmd", _fake_cases(calls), lambda: {"gpu": "fake"}, lambda: {"copy_GBps": 1.0},
                         lambda data, out: files.append(1), log=lambda *a: None, clock=clock)
    return rc, json.loads((Path(args.out) / "targets.json").read_text())


def test_resume_skips_done_units(tmp_path):
    t = [0.0]

    def clock():  # every call advances 1 s: with a 100 s budget ssd-op (estimate 240 s) is deferred
        t[0] += 1.0
        return t[0]

    calls: list[str] = []
    rc, data = _run(_args(tmp_path, time_budget=100), calls, clock)
    assert rc == 3  # some units deferred by the budget
    deferred = [n for n, r in data["units"].items() if r["status"] == "deferred"]
    done = [n for n, r in data["units"].items() if r["status"] == "done"]
    assert deferred and "ceilings" in done and data["units"]["scan-op"]["status"] == "failed"
    a = data["units"]["train-step-a"]["rows"][0]["train_lengths"] if "train-step-a" in done else None
    assert a in (None, "2048,8192")
    data["units"][done[-1]]["status"] = "running"  # as if a process had died inside it
    (tmp_path / "targets.json").write_text(json.dumps(data))
    calls.clear()
    rc, data2 = _run(_args(tmp_path, resume=True), calls, clock)
    assert rc == 1  # scan-op failed again (its second attempt)
    assert set(calls) == {suite.SUITES["targets"][[u.name for u in suite.SUITES["targets"]].index(n)].case
                          for n in [*deferred, done[-1], "scan-op"]}
    assert all(r["status"] == "done" for n, r in data2["units"].items() if n != "scan-op")
    assert data2["units"]["scan-op"]["attempts"] == 2 and len(data2["processes"]) == 2
    assert data2["units"]["decode-b"]["rows"][0]["decode_batches"] == "64"
    assert data2["units"]["ceilings"]["process"] == 1 and data2["units"][deferred[0]]["process"] == 2
    calls.clear()
    rc, data3 = _run(_args(tmp_path, resume=True), calls, clock)
    assert calls == [] and rc == 1  # nothing to run: scan-op failed twice and is not tried again
    assert len(data3["processes"]) == 2  # a process with nothing to do leaves no record
    data3["units"]["decode-b"]["status"] = "deferred"
    (tmp_path / "targets.json").write_text(json.dumps(data3))
    rc = suite.run_suite(_args(tmp_path, resume=True), "cmd", _fake_cases(calls), lambda: {"gpu": "other"},
                         lambda: {}, lambda data, out: None, log=lambda *a: None, clock=clock)
    assert rc == 2 and calls == []  # one run = one GPU: a different GPU may not add to the file


def test_suite_needs_cuda(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = _runner()
    assert runner.main(["--suite", "targets", "--out", str(tmp_path)]) == 2
    assert "need a CUDA GPU" in capsys.readouterr().err
    (tmp_path / "targets.json").write_text(json.dumps(_synthetic()))
    assert runner.main(["--suite", "targets", "--out", str(tmp_path), "--report-only"]) == 0
    assert "## Targets" in (tmp_path / "targets.md").read_text()
    assert (tmp_path / "train-step.csv").is_file()


def test_explicit_options_win():
    runner = _runner()
    parser = runner.build_parser()
    argv = ["--suite", "targets", "--train-lengths", "2048", "--resume"]
    args = parser.parse_args(argv)
    suite.apply_suite_defaults(args, suite.explicit_options(parser, argv))
    assert args.train_lengths == "2048" and args.train_tokens == 32768 and args.torch_max_len == 1024


def test_cli_suite_options_reach_the_runner(tmp_path):
    """`transmamba bench --suite targets --report-only` is handed on (rebuilds the report, no GPU)."""
    from transmamba.cli import main

    (tmp_path / "targets.json").write_text(json.dumps(_synthetic()))
    assert main(["bench", "--suite", "targets", "--out", str(tmp_path), "--report-only"]) == 0
    assert (tmp_path / "targets.md").is_file()


def test_no_machine_paths_in_results():
    text = suite.scrub('File "/root/x/site-packages/fla/ops/chunk.py", line 3; /tmp/site/a.py')
    assert "/root" not in text and "/tmp" not in text and "chunk.py" in text
    assert suite._out_as_placeholder(["--suite", "targets", "--out", "/root/out/s"]) == [
        "--suite", "targets", "--out", "OUT"]


def test_peer_warm_splits_every_autotuner():
    """Worker w of n keeps configs w, w+n, ...; together the workers cover each kernel's configs once."""
    triton = pytest.importorskip("triton")
    import peer_warm

    def make():
        @triton.autotune(configs=[triton.Config({"B": b}, num_warps=w) for b in (16, 32, 64) for w in (2, 4)],
                         key=["n"])
        @triton.jit
        def k(x, n, B: triton.language.constexpr):
            pass
        return k

    seen = []
    for w in range(4):
        k = make()
        peer_warm.keep_share([k], w, 4)
        seen += [str(c) for c in k.configs]
    assert sorted(seen) == sorted(str(c) for c in make().configs)
    k = make()
    assert peer_warm.keep_share([k], 9, 10) == 1  # more workers than configs: one each


def test_partial_rows_of_a_killed_unit_are_reported():
    data = _synthetic()
    data["units"]["ssd-op"] = {"case": "ssd-op", "status": "interrupted", "process": 1,
                               "partial_rows": data["units"]["ssd-op"]["rows"][:1]}
    rows = report.case_rows(data)["ssd-op"]
    assert len(rows) == 1 and rows[0]["partial"] == "unit interrupted"
    assert "1 (partial)" in report.build_report(data)
