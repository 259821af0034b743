"""`transmamba forecast train|eval`: a tiny run end to end on the synthetic default and on a CSV, and
clear errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch

from transmamba.cli import main


@pytest.fixture(autouse=True)
def _restore_threads():
    """`--threads 1` sets torch's global thread count; give the next test back what it had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TINY = [
    "--d-model",
    "16",
    "--n-heads",
    "2",
    "--d-state",
    "4",
    "--seq-len",
    "24",
    "--horizon",
    "8",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--lr",
    "3e-3",
    "--max-train-windows",
    "64",
    "--max-eval-windows",
    "32",
    "--threads",
    "1",
    "--quiet",
]


def test_train_then_eval_synthetic(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["forecast", "train", "--synthetic-steps", "400", "--out", str(out), *TINY])
    assert rc == 0
    for name in ("model.safetensors", "config.json", "metrics.json", "forecast.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["horizon"] == 8 and metrics["epochs_run"] == 2 and metrics["test_mse"] > 0
    assert "test mse" in capsys.readouterr().out
    rc = main(["forecast", "eval", "--checkpoint", str(out), "--json", "--plot", str(tmp_path / "p.png")])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["mse"] == pytest.approx(metrics["test_mse"], rel=1e-5)
    assert (tmp_path / "p.png").is_file()


def test_train_on_csv_transformer_s_mode(tmp_path, capsys):
    csv = tmp_path / "toy.csv"
    rows = ["date,a,OT"] + [
        f"2020-01-{1 + h // 24:02d} {h % 24:02d}:00:00,{h % 7},{(h * 3) % 11}" for h in range(24 * 12)
    ]
    csv.write_text("\n".join(rows) + "\n")
    rc = main(
        [
            "forecast",
            "train",
            "--data",
            str(csv),
            "--model",
            "transformer",
            "--features",
            "S",
            "--out",
            str(tmp_path / "r"),
            "--no-plot",
            *TINY,
        ]
    )
    assert rc == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["n_vars"] == 1 and cfg["data"]["features"] == "S"
    assert not (tmp_path / "r" / "forecast.png").exists()


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("when,a\n2020-01-01 00:00:00,1\n")
    assert main(["forecast", "train", "--data", str(bad), *TINY]) == 2
    assert "no 'date' column" in capsys.readouterr().err
    assert main(["forecast", "train", "--data", str(tmp_path / "missing.csv"), *TINY]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["forecast", "eval", "--checkpoint", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit):
        main(["forecast", "train", "--help"])
    text = capsys.readouterr().out
    for opt in ("--horizon", "--model", "--mixer", "--patience", "--lradj", "--max-train-windows"):
        assert opt in text
