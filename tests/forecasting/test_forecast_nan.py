"""`forecast train` that goes non-finite ends with exit code 1 and names the last good checkpoint (which
evaluates to a finite MSE), instead of printing `test mse nan` and exiting 0."""

from __future__ import annotations

import json
import math

from transmamba import cli
from transmamba.forecasting import loop

FC_TINY = ["--synthetic-steps", "400", "--horizon", "8", "--seq-len", "24", "--epochs", "3", "--d-model",
           "16",
           "--n-heads", "2", "--batch-size", "16", "--no-plot", "--quiet", "--threads", "1",
           "--max-train-windows", "64"]


def test_forecast_nan_names_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    real = loop.forecast_step
    calls = {"train": 0}

    def poisoned(model, y, y_mark, pred_len):
        out = real(model, y, y_mark, pred_len)
        if model.training:  # training steps only: epoch 1 has 4 (64 windows / 16), then NaN
            calls["train"] += 1
            if calls["train"] > 4:
                return out * float("nan")
        return out

    monkeypatch.setattr(loop, "forecast_step", poisoned)
    out = tmp_path / "fc"
    rc = cli.main(["forecast", "train", *FC_TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and err.count("\n") == 1
    assert "training loss became nan at epoch 2" in err
    assert f"the last good checkpoint is {out} (epoch 1" in err
    monkeypatch.setattr(loop, "forecast_step", real)
    assert cli.main(["forecast", "eval", "--checkpoint", str(out), "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(res["mse"]) and res["windows"] > 0
