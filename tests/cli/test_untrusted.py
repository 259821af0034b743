"""Untrusted input: checkpoints never name files to read, shapes are checked against the safetensors header
before anything is allocated, pickles are refused in one line, inference validates ids and lengths."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from transmamba import cli
from transmamba.models.config import ModelConfig
from transmamba.models.lm import CausalLM

FC_TINY = ["--synthetic-steps", "400", "--horizon", "8", "--seq-len", "24", "--epochs", "1", "--d-model",
           "16",
           "--n-heads", "2", "--batch-size", "16", "--no-plot", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def forecast_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("fc") / "fc"
    assert cli.main(["forecast", "train", *FC_TINY, "--out", str(out)]) == 0
    return out


def test_forecast_checkpoint_naming_etc_passwd_is_refused_unread(forecast_ckpt, tmp_path, capsys):
    """A checkpoint whose config.json says data.path=/etc/passwd (as old checkpoints stored the path) is not
    opened: eval asks for --data, and nothing of the file is printed."""
    planted = tmp_path / "planted"
    shutil.copytree(forecast_ckpt, planted)
    meta = json.loads((planted / "config.json").read_text())
    assert "path" not in meta["data"]  # new checkpoints never store one
    meta["data"].pop("synthetic", None)
    meta["data"]["path"] = "/etc/passwd"
    (planted / "config.json").write_text(json.dumps(meta))
    capsys.readouterr()
    rc = cli.main(["forecast", "eval", "--checkpoint", str(planted)])
    cap = capsys.readouterr()
    assert rc == 2 and "pass its CSV with --data PATH" in cap.err and cap.err.count("\n") == 1
    assert "root:" not in cap.out + cap.err and "/bin/" not in cap.out + cap.err
    # the clean checkpoint (synthetic data) evaluates without --data
    assert cli.main(["forecast", "eval", "--checkpoint", str(forecast_ckpt), "--json"]) == 0
    # sizes in the data section are bounded before anything is generated
    meta["data"]["path"] = None
    meta["data"]["synthetic_steps"] = 10**12
    (planted / "config.json").write_text(json.dumps(meta))
    rc = cli.main(["forecast", "eval", "--checkpoint", str(planted)])
    assert rc == 2 and "synthetic_steps must be a whole number in" in capsys.readouterr().err


def test_shapes_are_checked_before_allocation(tmp_path, monkeypatch):
    """A config.json asking for a 100k-wide model beside a tiny weight file is refused from the safetensors
    header, before the model is built (CausalLM.__init__ runs only on the meta device)."""
    cfg = ModelConfig(pattern="M-*-", vocab_size=64, d_model=32, n_heads=2, headdim=16, d_state=8,
                      max_seq_len=64)
    CausalLM(cfg).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["d_model"] = 100_000
    (tmp_path / "config.json").write_text(json.dumps(raw))
    real_init = CausalLM.__init__
    devices = []

    def spy(self, config):
        devices.append(torch.empty(0).device.type)
        real_init(self, config)

    monkeypatch.setattr(CausalLM, "__init__", spy)
    with pytest.raises(ValueError, match="does not fit this model"):
        CausalLM.from_pretrained(tmp_path)
    assert devices == ["meta"]
    (tmp_path / "model.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        CausalLM.from_pretrained(tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("PWNED",))


def test_pickles_are_refused_in_one_line(tmp_path, capsys):
    from transmamba.training.checkpoint import CheckpointError, safe_torch_load

    (tmp_path / "optimizer.pt").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError) as err:
        safe_torch_load(tmp_path / "optimizer.pt")
    msg = str(err.value)
    assert "never unpickled" in msg and "\n" not in msg and "weights_only=False" not in msg
    assert "PWNED" not in capsys.readouterr().out


def test_inference_validates_ids_lengths_and_config():
    cfg = ModelConfig(pattern="T-*-", vocab_size=64, d_model=32, n_heads=2, headdim=16, d_state=8,
                      max_seq_len=32, transpoints=[4])
    model = CausalLM(cfg).eval()
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        model(torch.tensor([[1, 64]]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="exceed max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    if torch.device("meta") != model.embed.weight.device:
        with pytest.raises(ValueError, match="are on meta"):
            model(torch.zeros(1, 4, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="max_seq_len=32"):
        model.generate([[1, 2, 3]], 30, greedy=True)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([[1, 99]], 2, greedy=True)
    with pytest.raises(ValueError, match=r"lie outside \[0, max_seq_len=32\]"):
        model.set_transpoints([40])
    for theta in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rope_theta must be a finite number > 0"):
            ModelConfig(pattern="*-", vocab_size=64, d_model=32, n_heads=2, rope_theta=theta)


def test_recall_argmax_streams_without_full_logits():
    """argmax_tokens equals argmax of the full logits, and the lm_head never sees more than chunk_size
    positions at once (so (b, t, V) fp32 logits are never materialised)."""
    torch.manual_seed(0)
    cfg = ModelConfig(pattern="M-*-", vocab_size=64, d_model=32, n_heads=2, headdim=16, d_state=8,
                      max_seq_len=64)
    model = CausalLM(cfg).eval()
    ids = torch.randint(0, 64, (3, 40))
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    got = model.argmax_tokens(ids, chunk_size=16)
    hook.remove()
    assert max(seen) <= 16
    with torch.no_grad():
        ref = model(ids).logits.argmax(-1)
    assert torch.equal(got, ref)
