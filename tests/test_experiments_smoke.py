"""Smoke test of the experiments folder (paper reproductions and studies live outside the package): one tiny
MQAR run of `experiments/repro_gpu.py`'s worker on the CPU, and its report."""

import json
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_repro_worker_and_report_smoke(tmp_path):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    import repro_gpu
    import repro_gpu_report

    job = dict(d_model=32, n_layers=2, lr=1e-3, wd=0.1, clip=1.0, warmup=2, min_lr_ratio=0.1, batch=4,
               log_every=2, graph=True, triton=True, steps=4, eval_rows=8, eval_batch=8, task="mqar",
               vocab=64, pairs_lo=2, pairs_hi=6, filler_lo=0, filler_hi=3, eval_grid=[[4, 0]], kind="tm-V9",
               seed=0, name="mq")
    (tmp_path / "mq.job.json").write_text(json.dumps(job))
    repro_gpu.worker([str(tmp_path / "mq.job.json")], [str(tmp_path / "mq.jsonl")])
    types = [json.loads(x)["type"] for x in (tmp_path / "mq.jsonl").read_text().splitlines()]
    assert types[:2] == ["start", "ready"] and types[-1] == "done"
    repro_gpu_report.report(tmp_path)
    assert "tm-V9" in (tmp_path / "tables.md").read_text()
