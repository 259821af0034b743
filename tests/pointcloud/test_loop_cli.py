"""Metrics, a tiny training run through the library loop, and `transmamba pointcloud train|eval`."""

import json

import pytest
import torch

from transmamba.cli import main
from transmamba.pointcloud.data import load_pointcloud_data
from transmamba.pointcloud.loop import TrainConfig, accuracy_metrics, confusion_matrix, train_classifier
from transmamba.pointcloud.model import PoinTramba, PoinTrambaConfig


def test_confusion_and_accuracies():
    pred, true = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    cm = confusion_matrix(pred, true, 3)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    m = accuracy_metrics(cm)
    assert m["oa"] == pytest.approx(400 / 6)
    assert m["macc"] == pytest.approx(100 * (1 / 2 + 1 + 2 / 3) / 3)


def test_tiny_training_learns_and_checkpoints(tmp_path):
    """Two classes (spheres vs boxes), 32 steps: the loss falls and the test accuracy beats chance (50 %; 70 %
    of 32 test clouds is 2.3 standard deviations above it). Seeds are fixed, so the run is reproducible."""
    torch.manual_seed(0)
    data = load_pointcloud_data("synthetic", num_points=64, num_classes=2, train_size=64, test_size=32)
    cfg = PoinTrambaConfig.from_preset(
        "pointramba-tiny", num_classes=2, num_points=64, num_groups=8, group_size=8, dim=32, intra_heads=4
    )
    model = PoinTramba(cfg)
    h = train_classifier(
        model,
        data,
        TrainConfig(epochs=8, batch_size=16, lr=3e-3),
        num_points=64,
        run_dir=tmp_path / "run",
        log=None,
    )
    assert h["steps"] == 32 and len(h["epochs"]) == 8
    assert h["epochs"][-1]["train_ce"] < 0.8 * h["epochs"][0]["train_ce"]
    assert h["best"]["oa"] >= 70, h["best"]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 8 and state["step"] == 32


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "pointcloud",
            "train",
            "--train-size",
            "32",
            "--test-size",
            "16",
            "--num-classes",
            "3",
            "--epochs",
            "1",
            "--groups",
            "8",
            "--num-points",
            "64",
            "--out",
            str(out),
            "--quiet",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    for f in ("metrics.json", "confusion.png", "importance.png", "best", "last"):
        assert (out / f).exists(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0 <= metrics["test_oa"] <= 100 and len(metrics["confusion"]) == 3
    capsys.readouterr()
    png = tmp_path / "imp.png"
    assert main(["pointcloud", "eval", "--checkpoint", str(out), "--json", "--importance", str(png)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["oa"] == pytest.approx(metrics["test_oa"]) and res["clouds"] == 16 and png.is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["pointcloud", "train", "--dataset", "modelnet40", "--data", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "modelnet40_shape_names.txt: not found" in err and "\n" not in err
    assert main(["pointcloud", "eval", "--checkpoint", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
