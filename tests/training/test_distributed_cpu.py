"""Data parallel on CPU: torchrun with 2 Gloo processes trains, only rank 0 prints and writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from transmamba.training.checkpoint import find_checkpoint


@pytest.mark.slow
def test_torchrun_two_ranks(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "transmamba", "train", "--data", str(tiny_corpus), "--device", "cpu", "--threads", "1",
           "--vocab_size", "300", "--seq_len", "32", "--batch_size", "2", "--max_steps", "2",
           "--eval_every", "2", "--eval_batches", "1", "--progress", "false", "--out_dir", str(run),
           "--model.d_model", "32", "--model.d_ff", "64", "--model.chunk_size", "8",
           "--model.transpoints", "[0, 4, 8, 16]"]
    env = {**os.environ, "TRANSMAMBA_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        proc.communicate()
        raise
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert out.count("final: step 2") == 1  # rank 0 only
    assert "world 2" in out
    assert find_checkpoint(run).name == "step-000002"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("2,256,")  # 2 ranks x 2 rows x 32 tokens x 2 steps
