"""benchmarks/repro_gpu.py on the CPU (eager path): the device-side batch generators (MQAR with filler,
PhoneBook with one-symbol names) read back row by row, the learning-rate schedule, and a tiny MQAR run and a
tiny text run in one process writing their JSONL logs (start, ready, train, trained, eval, done), which the
report turns into tables."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from transmamba.data import synthetic as syn
from transmamba.data.synthetic import BOS, DIGIT0, NL, NOISE, PAD, QUERY, SEP, SYMBOL0

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="module")
def rg():
    import repro_gpu

    return repro_gpu


TINY = dict(d_model=32, n_layers=2, lr=1e-3, wd=0.1, clip=1.0, warmup=2, min_lr_ratio=0.1, batch=4,
            log_every=2, graph=True, triton=True, steps=4, eval_rows=8, eval_batch=8)


def _check_mqar_rows(ids, lab, meta, vocab, replacement=False):
    n_keys, _ = syn.mqar_split(vocab)
    for r in range(ids.shape[0]):
        row, n, f = ids[r].tolist(), int(meta["n"][r]), int(meta["f"][r])
        assert row[0] == BOS
        keys, values = row[1 : 1 + 2 * n : 2], row[2 : 2 + 2 * n : 2]
        assert len(set(keys)) == n and all(SYMBOL0 <= k < SYMBOL0 + n_keys for k in keys)
        assert all(SYMBOL0 + n_keys <= v < vocab for v in values)
        assert row[1 + 2 * n : 1 + 2 * n + f] == [NOISE] * f
        q0 = 1 + 2 * n + f
        pairs = dict(zip(keys, values))
        asked = [row[q0 + 2 * i] for i in range(n)]
        if replacement:
            assert set(asked) <= set(keys)
        else:
            assert sorted(asked) == sorted(keys)  # every pair queried once
        for i in range(n):
            assert pairs[row[q0 + 2 * i]] == row[q0 + 2 * i + 1] == int(lab[r, q0 + 2 * i + 1])
        assert row[q0 + 2 * n :] == [PAD] * (len(row) - q0 - 2 * n)
        assert int((lab[r] != -100).sum()) == n


def test_device_batches_mqar_and_phonebook():
    import repro_gpu_data as d

    spec = dict(task="mqar", vocab=40, pairs_lo=2, pairs_hi=6, filler_lo=0, filler_hi=5)
    gen = torch.Generator().manual_seed(0)
    ids, lab, meta = d.recall_batch(spec, 16, "cpu", generator=gen)
    assert ids.shape == lab.shape == (16, d.row_len(spec)) == (16, 1 + 4 * 6 + 5)
    _check_mqar_rows(ids, lab, meta, 40)
    assert len(set(meta["n"].tolist())) > 1 and len(set(meta["f"].tolist())) > 1  # sizes vary by row
    ids, lab, meta = d.recall_batch(dict(spec, query_replacement=True), 64, "cpu", generator=gen)
    _check_mqar_rows(ids, lab, meta, 40, replacement=True)
    repeats = []
    for r in range(64):
        n, f = int(meta["n"][r]), int(meta["f"][r])
        q0 = 1 + 2 * n + f
        repeats.append(len(set(ids[r, q0 : q0 + 2 * n : 2].tolist())) < n)
    assert any(repeats)  # some key asked twice

    spec = dict(task="phonebook", vocab=40, pairs_lo=4, pairs_hi=10, number_len=2, queries=3)
    ids, lab, meta = d.recall_batch(spec, 16, "cpu", generator=gen)
    assert ids.shape[1] == d.row_len(spec) == syn.phonebook_length(10, name_len=1, number_len=2, n_queries=3)
    for r in range(16):
        row, n, q = ids[r].tolist(), int(meta["n"][r]), int(meta["q"][r])
        assert q == max(1, min(3, n // 2))
        book = {}
        for e in range(n):
            name, sep, d1, d2, nl = row[1 + 5 * e : 6 + 5 * e]
            assert sep == SEP and nl == NL and SYMBOL0 <= name < 40 and name not in book
            assert all(DIGIT0 <= x < DIGIT0 + 10 for x in (d1, d2))
            book[name] = (d1, d2)
        q0, seen = 1 + 5 * n, set()
        for i in range(q):
            qu, name, sep, d1, d2, nl = row[q0 + 6 * i : q0 + 6 * i + 6]
            assert qu == QUERY and sep == SEP and nl == NL and book[name] == (d1, d2) and name not in seen
            seen.add(name)
            assert lab[r, q0 + 6 * i + 3 : q0 + 6 * i + 5].tolist() == [d1, d2]
        assert int((lab[r] != -100).sum()) == 2 * q
        assert row[q0 + 6 * q :] == [PAD] * (len(row) - q0 - 6 * q)


def test_lr_schedule(rg):
    job = dict(TINY, steps=10)
    assert rg.lr_at(job, 0) == pytest.approx(0.5e-3)
    cosine = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 7 / 8))  # step 9 of 10, 2 warm-up steps
    assert rg.lr_at(job, 9) == pytest.approx(1e-3 * cosine)


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
    # steps_auto: the step count is set for all runs of the process from the measured rate
    auto = dict(mq, name="auto", kind="transformer", steps=10**6, steps_auto=True, calib_steps=4, log_every=2,
                deadline=time.time() + 3.0)
    p = tmp_path / "auto.job.json"
    p.write_text(json.dumps(auto))
    rg.worker([str(p)], [str(tmp_path / "auto.jsonl")])
    lines = [json.loads(x) for x in (tmp_path / "auto.jsonl").read_text().splitlines()]
    set_ = [x for x in lines if x["type"] == "steps_set"]
    done = [x for x in lines if x["type"] == "trained"][0]
    assert len(set_) == 1 and set_[0]["steps"] >= 4 and done["steps"] % 2 == 0
    assert done["steps"] <= set_[0]["steps"]
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
