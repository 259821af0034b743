"""pointcloud / diffuse numeric flags: out-of-range or non-finite values end in one line and exit 2 before
any data or model is built."""

from __future__ import annotations

import pytest

from transmamba.cli import main


@pytest.mark.parametrize("argv", [
    ["pointcloud", "train", "--threads", "0"],
    ["pointcloud", "train", "--epochs", "-1"],
    ["pointcloud", "train", "--learning-rate", "0"],
    ["pointcloud", "train", "--batch-size", "2.5"],
    ["diffuse", "train", "--lr", "nan"],
    ["diffuse", "train", "--steps", "0"],
    ["diffuse", "train", "--ema-decay", "1.5"],
])
def test_bad_numbers_exit_2_in_one_line(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and argv[2] in err
    assert not (tmp_path / "run").exists()
