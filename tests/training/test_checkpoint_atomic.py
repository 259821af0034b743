"""A save that dies midway (killed process, failing rename) leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from transmamba.training import checkpoint as ck


def _save(run, step, model, **kw):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return ck.save_checkpoint(run, step=step, model=model, optimizer=opt, scheduler=None,
                              trainer_state={"data": {"epoch": 0, "cursor": step}}, train_config={}, **kw)


def test_failing_rename_keeps_previous_checkpoint(tmp_path, monkeypatch, standin):
    model = standin(50)
    _save(tmp_path, 1, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name.startswith("step-"):
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path, 2, model)
    monkeypatch.undo()
    last = ck.find_checkpoint(tmp_path)
    assert last.name == "step-000001"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    fresh = standin(50)
    state = ck.load_checkpoint(last, model=fresh)
    assert state["step"] == 1
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k])


def test_killed_during_save_previous_checkpoint_loads(tmp_path, standin):
    """A child saves step 1, then step 2 with a pause between files; we SIGKILL it mid-save."""
    here = Path(__file__).parent
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(here)!r})
        from conftest import StandInLM
        from transmamba.training import checkpoint as ck
        torch.manual_seed(0)
        m = StandInLM(50)
        opt = torch.optim.AdamW(m.parameters())
        kw = dict(optimizer=opt, scheduler=None, trainer_state={{}}, train_config={{}})
        ck.save_checkpoint({str(tmp_path)!r}, step=1, model=m, **kw)
        print("saved 1", flush=True)
        import os; os.environ["TRANSMAMBA_TEST_SAVE_DELAY"] = "30"
        with torch.no_grad():
            m.emb.weight.add_(1.0)
        ck.save_checkpoint({str(tmp_path)!r}, step=2, model=m, **kw)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved 1"
        deadline = time.time() + 60
        tmp_dirs = []
        while time.time() < deadline and not tmp_dirs:  # wait until the second save is under way
            tmp_dirs = [p for p in (tmp_path / "checkpoints").iterdir()
                        if p.name.startswith(".tmp-step-000002")]
            time.sleep(0.05)
        assert tmp_dirs, "the second save never started"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = ck.find_checkpoint(tmp_path)
    assert last.name == "step-000001"
    torch.manual_seed(0)
    ref = standin(50)
    fresh = standin(50)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    assert ck.load_checkpoint(last, model=fresh)["step"] == 1
    assert torch.equal(fresh.emb.weight, ref.emb.weight)
    # the next save by a live process clears the dead one's temporary folder
    ck.save_checkpoint(tmp_path, step=3, model=fresh, optimizer=None, scheduler=None, trainer_state={},
                       train_config={})
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert ck.find_checkpoint(tmp_path).name == "step-000003"
