"""`transmamba forecast train`: laptop defaults, --paper, the field's flag aliases and the progress bar."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from transmamba.cli import main
from transmamba.commands.forecast import _LAPTOP, _PAPER, _fill_defaults, register


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


SMALL = ["--d-state", "4", "--synthetic-steps", "400", "--max-train-windows", "64",
         "--max-eval-windows", "16", "--threads", "1", "--no-plot"]


def _train(tmp_path, *flags, quiet=True) -> tuple[dict, dict]:
    out = tmp_path / "run"
    argv = ["forecast", "train", *SMALL, *flags, "--out", str(out)] + (["--quiet"] if quiet else [])
    assert main(argv) == 0
    return json.loads((out / "config.json").read_text()), json.loads((out / "metrics.json").read_text())


def _parsed(*flags) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["forecast", "train", *flags])
    _fill_defaults(args)
    return args


def test_laptop_defaults_and_paper_flag():
    assert _LAPTOP["d_model"] < _PAPER["d_model"] == 512 and _LAPTOP["revin"] and not _PAPER["revin"]
    args = _parsed()
    assert {k: getattr(args, k) for k in _LAPTOP} == _LAPTOP
    args = _parsed("--paper")
    assert {k: getattr(args, k) for k in _PAPER} == _PAPER
    args = _parsed("--paper", "--d-model", "16", "--revin")  # explicit flags win
    assert (args.d_model, args.revin, args.lr) == (16, True, _PAPER["lr"])


def test_field_flag_names_are_aliases(tmp_path):
    """The field's names reach the model, data and training configs written to the run folder."""
    cfg, metrics = _train(tmp_path, "--pred_len", "8", "--seq_len", "24", "--train_epochs", "1",
                          "--learning_rate", "0.002", "--e_layers", "2", "--d_model", "16",
                          "--batch_size", "16")
    assert cfg["data"]["pred_len"] == 8 and cfg["data"]["seq_len"] == 24
    assert cfg["model"]["n_layers"] == 2 and cfg["model"]["d_model"] == 16
    assert cfg["train"]["lr"] == 0.002 and cfg["train"]["epochs"] == 1 and metrics["epochs_run"] == 1


def test_progress_bar_counts_steps(tmp_path, capsys):
    _train(tmp_path, "--epochs", "1", "--seq-len", "24", "--horizon", "8", "--batch-size", "16", quiet=False)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "4/4" in err  # 64 windows / batch 16 = 4 steps


def test_help_names_the_defaults_and_the_paper_setting(capsys):
    with pytest.raises(SystemExit):
        main(["forecast", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {_LAPTOP['d_model']}" in text and "--paper" in text and "needs a GPU" in text
    for alias in ("--pred_len", "--seq_len", "--train_epochs", "--learning_rate", "--e_layers"):
        assert alias in text
