"""benchmarks/repro_gpu.py on the CPU (eager path): a tiny MQAR run and a tiny text run in one process write
their JSONL logs (start, ready, train, trained, eval, done), the report turns them into tables, and the
training stream pads rows to one static length with unscored padding."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def rg():
    sys.path.insert(0, str(BENCH))
    import repro_gpu

    return repro_gpu


TINY = dict(d_model=32, n_layers=2, lr=1e-3, wd=0.1, clip=1.0, warmup=2, min_lr_ratio=0.1, batch=4,
            log_every=2, graph=True, triton=True, steps=4, eval_rows=8, eval_batch=8)


def test_stream_pads_to_static_length(rg):
    job = dict(TINY, task="mqar", vocab=64, pairs_lo=2, pairs_hi=6, filler_lo=0, filler_hi=3, seed=0)
    nxt = rg.make_stream(job)
    T = rg.static_len(job)
    assert T == 1 + 4 * 6 + 3
    for _ in range(5):
        ids, lab = nxt()
        assert ids.shape == lab.shape == (4, T)
        scored = lab != -100
        assert scored.any() and (lab[scored] == ids[scored]).all()
        n_scored = scored.sum(1)
        assert (n_scored == n_scored[0]).all() and 2 <= n_scored[0] <= 6  # one answer per pair
    assert rg.lr_at(dict(job, steps=10), 0) == pytest.approx(0.5e-3)
    cosine = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 7 / 8))  # step 9 of 10, 2 warm-up steps
    assert rg.lr_at(dict(job, steps=10), 9) == pytest.approx(1e-3 * cosine)


def test_worker_and_report(rg, tmp_path):
    import repro_gpu_report

    mq = dict(TINY, task="mqar", vocab=64, pairs_lo=2, pairs_hi=6, filler_lo=0, filler_hi=3,
              eval_grid=[[4, 0], [6, 0], [6, 8]], kind="tm-V9", seed=0, name="mq")
    tx = dict(TINY, task="text", train_len=32, data=".repro_data/shakespeare.npz", val_windows=2, swap=False,
              kind="transformer", seed=1, name="tx")
    if not (rg.ROOT / tx["data"]).is_file():
        tx = None
    files = []
    for j in [mq] + ([tx] if tx else []):
        p = tmp_path / f"{j['name']}.job.json"
        p.write_text(json.dumps(j))
        files += [str(p), str(tmp_path / f"{j['name']}.jsonl")]
    rg.worker(files[0::2], files[1::2])
    lines = [json.loads(x) for x in (tmp_path / "mq.jsonl").read_text().splitlines()]
    types = [x["type"] for x in lines]
    assert types[:2] == ["start", "ready"] and types[-1] == "done" and "trained" in types
    assert [x["step"] for x in lines if x["type"] == "train"] == [4]  # 3 warm-up steps, then 1; logged at 4
    ev = [x for x in lines if x["type"] == "eval"]
    assert {(e["pairs"], e["filler"], e["schedule"]) for e in ev} == {
        (p, f, s) for p, f in [(4, 0), (6, 0), (6, 8)] for s in ("train", "scaled", "attention")
    }
    assert all(0.0 <= e["acc"] <= 1.0 for e in ev)
    repro_gpu_report.report(tmp_path)
    md = (tmp_path / "tables.md").read_text()
    assert "tm-V9" in md and "6/8" in md
    if tx:
        assert "Shakespeare" in md
