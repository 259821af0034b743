"""The trainer's guards: Ctrl-C saves and resumes bit-exactly, a NaN names a checkpoint that reloads to a
finite loss, hyperparameters are validated, resume refuses another architecture, one run per folder, disk
errors in one line, and `--task` trains the recall tasks."""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transmamba.cli import build_parser, main
from transmamba.commands.train import config_from_args
from transmamba.training.config import ConfigError

SRC = Path(__file__).resolve().parents[2] / "src"
WORDS = ("the king and the queen walk in the garden while rain falls on the old stone wall "
         "a fool sings of love and the night is long but morning comes").split()
TINY = ["--threads", "1", "--vocab-size", "300", "--seq-len", "32", "--batch-size", "2", "--eval-batches",
        "1",
        "--warmup-steps", "1", "--progress", "false", "--tensorboard", "false", "--model.d_model", "32",
        "--model.d_ff", "64", "--model.chunk_size", "8", "--model.transpoints", "[0, 4, 8, 16]"]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSMAMBA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        idx = torch.randint(len(WORDS), (320,), generator=g).tolist()
        lines = [" ".join(WORDS[j] for j in idx[k : k + 8]) for k in range(0, 320, 8)]
        (folder / f"play{i}.md").write_text("\n".join(lines) + "\n")
    return folder


def _cfg(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder).resolve() / "model.safetensors"))


def _losses(run: Path) -> dict[int, str]:
    rows = (run / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    i, j = head.index("step"), head.index("train_loss")
    return {int(r.split(",")[i]): r.split(",")[j] for r in rows[1:]}


def test_sigint_saves_the_current_step_and_resumes_bit_exactly(tmp_path, corpus):
    """A real `transmamba train` process gets SIGINT mid-run: it saves a checkpoint at the step it is on,
    prints the --resume command and exits 130; running that command finishes the run with weights and
    per-step losses identical (bitwise) to an uninterrupted run's."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    common = [sys.executable, "-m", "transmamba", "train", "--data", str(corpus), *TINY, "--max-steps", "16",
              "--eval-every", "8", "--log-every", "1"]
    full = tmp_path / "full"
    subprocess.run([*common, "--out-dir", str(full)], env=env, check=True, capture_output=True, cwd=tmp_path)

    run = tmp_path / "run"
    proc = subprocess.Popen([*common, "--out-dir", str(run)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a few steps are logged, then interrupt between evals
        csv = run / "metrics.csv"
        if csv.is_file() and len(csv.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    saved = [line for line in err.splitlines() if line.startswith("interrupted at step")]
    resume = [line for line in err.splitlines() if line.startswith("continue with: ")]
    assert saved and resume, err
    step = int(saved[0].split()[3].rstrip(":"))
    assert 3 <= step < 16
    assert (run / "last").resolve().name == f"step-{step:06d}"
    argv = resume[0][len("continue with: transmamba "):]
    import shlex

    subprocess.run([sys.executable, "-m", "transmamba", *shlex.split(argv)], env=env, check=True,
                   capture_output=True, cwd=tmp_path)
    a, b = _weights(full / "last"), _weights(run / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(full) == _losses(run)


def test_nan_names_a_checkpoint_that_reloads_to_a_finite_loss(tmp_path, corpus, capsys):
    """lr 100 blows the weights up after two steps: the run stops with exit 1, names step-2's checkpoint
    (weights and held-batch loss were checked before it was written), which reloads to a finite loss."""
    from transmamba.models.lm import CausalLM

    out = tmp_path / "nan"
    rc = main(["train", "--data", str(corpus), *TINY, "--lr", "100", "--warmup-steps", "4", "--grad-clip",
               "0",
               "--save-every", "1", "--max-steps", "12", "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    line = [x for x in err.splitlines() if "last good checkpoint is" in x]
    assert len(line) == 1
    named = Path(line[0].split("last good checkpoint is ")[1].split()[0].rstrip(".;,"))
    assert named.is_dir() and (out / "last").resolve() == named.resolve()
    model = CausalLM.from_pretrained(named)
    ids = torch.randint(0, model.config.vocab_size, (2, 32))
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert math.isfinite(float(loss))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("argv,words", [
    (["--max-steps", "2.5"], "max_steps must be a whole number"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "0"], "lr must be > 0"),
    (["--min-lr-ratio", "-1"], "min_lr_ratio must be in [0, 1]"),
    (["--grad-clip", "-1"], "grad_clip must be >= 0"),
    (["--beta2", "1"], "beta2 must be in [0, 1)"),
    (["--weight-decay", "-0.1"], "weight_decay must be >= 0"),
    (["--seed", "-3"], "seed must be >= 0"),
    (["--out-dir", "runs/{nope}"], "only {preset}"),
    (["--task", "mqarr"], "task must be text"),
])
def test_hyperparameters_are_validated(argv, words):
    with pytest.raises(ConfigError) as err:
        _cfg(*argv)
    assert words in str(err.value)


def test_yaml_values_keep_their_types(tmp_path):
    for text, words in (("batch_size: true\n", "batch_size must be a whole number"),
                        ("max_steps: 2.5\n", "max_steps must be a whole number"),
                        ("lr: .nan\n", "lr must be a finite number"),
                        ("preset: [a, b]\n", "preset must be str")):
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
            _cfg("--config", str(tmp_path / "c.yaml"))


def test_resume_refuses_another_architecture_and_a_second_process(tmp_path, corpus, capsys):
    from transmamba.training.trainer import RunLock

    out = tmp_path / "run"
    base = ["train", "--data", str(corpus), *TINY, "--max-steps", "2", "--eval-every", "2", "--out-dir",
            str(out)]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--resume", "--model.d_model", "48", "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "different architecture" in err and "model" in err and err.count("\n") == 1
    lock = RunLock(out)  # another process holds the run folder
    try:
        child = subprocess.run([sys.executable, "-m", "transmamba", *base, "--resume", "--max-steps", "3"],
                               env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
                               capture_output=True, text=True, timeout=120)
    finally:
        lock.release()
    assert child.returncode == 2 and "another process" in child.stderr and "Traceback" not in child.stderr
    assert main([*base, "--resume", "--max-steps", "3", "--lr", "0.001"]) == 0
    assert "resuming with changed settings (lr: 0.003 -> 0.001, max_steps: 2 -> 3)" in capsys.readouterr().out


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, corpus, capsys, monkeypatch):
    from transmamba.training import checkpoint as ck

    out = tmp_path / "run"
    base = ["train", "--data", str(corpus), *TINY, "--eval-every", "2", "--out-dir", str(out)]
    assert main([*base, "--max-steps", "2"]) == 0
    capsys.readouterr()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device",
                      str(out / "checkpoints" / "x" / "optimizer.pt"))

    monkeypatch.setattr(ck, "_torch_save", full)
    assert main([*base, "--max-steps", "4", "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "step-000002" in err
    assert (out / "last").resolve().name == "step-000002" and ck.is_complete((out / "last").resolve())


def test_recall_task_training_and_its_eval(tmp_path, capsys):
    """`train --task mqar` writes a checkpoint `eval mqar` scores; the rows are the task's (answer-only
    labels), so the loss is over answers."""
    from transmamba.training.recall_data import prepare_recall_data

    data = prepare_recall_data("mqar", seq_len=64, vocab_size=64, train_rows=8, val_rows=4)
    row = data.train.batch([0])
    assert row["input_ids"].shape == (1, 64) and int((row["labels"] != -100).sum()) > 0
    out = tmp_path / "mq"
    assert main(["train", "--task", "mqar", "--vocab-size", "64", "--seq-len", "64", "--batch-size", "4",
                 "--max-steps", "2", "--eval-every", "2", "--eval-batches", "1", "--progress", "false",
                 "--tensorboard", "false", "--threads", "1", "--model.d_model", "32", "--model.d_ff", "64",
                 "--model.chunk_size", "8", "--out-dir", str(out)]) == 0
    assert main(["eval", "mqar", "--checkpoint", str(out), "--lengths", "64", "--n-rows", "4", "--device",
                 "cpu",
                 "--no-progress"]) == 0
    assert "token_acc" in capsys.readouterr().out
