"""FSDP2 and DDP on CPU (gloo, 2 processes) against one process on the same global batch, and sharded
checkpoints resumed on a different number of ranks.

Every run trains the tiny TransMamba on the same packed rows: 2 ranks x 2 rows per rank = 1 process x 4
rows (the loader's rank stride makes the global batches identical). The logged training loss is the mean
over the global batch in both cases. What can differ is only the order of floating-point sums (gradient
all-reduce / reduce-scatter across 2 ranks instead of one batch sum; the loss's mean of two halves), so
losses agree to a few fp32 ulps per step, compounded over 4 AdamW steps; metrics.csv keeps 6 significant
digits (rounding up to 5e-6 relative), so we allow 2e-5 relative. A resume that lost the optimizer state or
the data position moves the loss by ~1e-2.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from transmamba.training.checkpoint import find_checkpoint
from transmamba.training.sharded_checkpoint import export_pretrained, is_sharded_checkpoint

STEPS, HALF = 4, 2
# min_lr_ratio 1: a constant lr after one warmup step, so a run cut at HALF (--max_steps HALF) and resumed
# with --max_steps STEPS follows the same schedule as an uninterrupted run of STEPS
COMMON = ["--device", "cpu", "--threads", "1", "--vocab_size", "300", "--seq_len", "32",
          "--max_steps", str(STEPS), "--warmup_steps", "1", "--min_lr_ratio", "1",
          "--eval_every", "2", "--eval_batches", "1",
          "--log_every", "1", "--progress", "false", "--tensorboard", "false",
          "--model.d_model", "32", "--model.d_ff", "64", "--model.chunk_size", "8",
          "--model.transpoints", "[0, 4, 8, 16]"]


def _train(tmp_path: Path, corpus: Path, run: Path, ranks: int, per_rank_batch: int, *extra: str) -> str:
    args = ["-m", "transmamba", "train", "--data", str(corpus), "--out_dir", str(run),
            "--batch_size", str(per_rank_batch), *COMMON, *extra]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "TRANSMAMBA_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        proc.communicate()
        raise
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out


def _losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f)}


def _assert_close(a: dict[int, float], b: dict[int, float], steps) -> None:
    for s in steps:
        assert abs(a[s] - b[s]) <= 2e-5 * abs(b[s]), (s, a[s], b[s])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    words = ("the king and the queen walk in the garden while rain falls on the old stone wall "
             "a fool sings of love and the night is long but morning comes").split()
    import random

    rng = random.Random(0)
    for i in range(12):
        lines = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(50)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus) -> dict[int, float]:
    tmp = tmp_path_factory.mktemp("single")
    run = tmp / "run"
    _train(tmp, corpus, run, 1, 4)
    return _losses(run)


def test_ddp_two_ranks_equal_one_process(tmp_path, corpus, single):
    run = tmp_path / "run"
    out = _train(tmp_path, corpus, run, 2, 2, "--parallel", "ddp")
    assert "world 2" in out and out.count(f"final: step {STEPS}") == 1
    _assert_close(_losses(run), single, range(1, STEPS + 1))
    assert not is_sharded_checkpoint(find_checkpoint(run))


def test_fsdp_two_ranks_then_one(tmp_path, corpus, single):
    """FSDP2 on 2 ranks equals one process; its sharded checkpoint resumes on 1 process exactly."""
    run = tmp_path / "run"
    out = _train(tmp_path, corpus, run, 2, 2, "--parallel", "fsdp", "--max_steps", str(HALF))
    assert "world 2, fsdp" in out
    ckpt = find_checkpoint(run)
    assert ckpt.name == f"step-{HALF:06d}" and is_sharded_checkpoint(ckpt)
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    _train(tmp_path, corpus, run, 1, 4, "--parallel", "fsdp", "--resume", "true")
    _assert_close(_losses(run), single, range(1, STEPS + 1))


def test_fsdp_one_rank_then_two_and_export(tmp_path, corpus, single):
    """A sharded checkpoint written by one process resumes on 2 FSDP2 ranks exactly, and exports to the
    single-file format with the same weights."""
    import torch

    from transmamba import CausalLM

    run = tmp_path / "run"
    _train(tmp_path, corpus, run, 1, 4, "--parallel", "fsdp", "--max_steps", str(HALF))
    assert is_sharded_checkpoint(find_checkpoint(run))
    _train(tmp_path, corpus, run, 2, 2, "--parallel", "fsdp", "--resume", "true")
    _assert_close(_losses(run), single, range(1, STEPS + 1))

    from transmamba.cli import main

    ckpt = find_checkpoint(run)
    exported = export_pretrained(ckpt, tmp_path / "exported")
    model = CausalLM.from_pretrained(exported)
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "exported2")]) == 0
    again = CausalLM.from_pretrained(tmp_path / "exported2")
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    logits = model(ids).logits
    assert torch.isfinite(logits).all() and torch.equal(logits, again(ids).logits)
    assert (exported / "tokenizer.json").is_file()
