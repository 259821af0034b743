"""`transmamba train` / `transmamba demo`: options from YAML and flags, clear errors, real CausalLM runs."""

from __future__ import annotations

import pytest
import torch

from transmamba.cli import build_parser, main
from transmamba.commands.train import config_from_args
from transmamba.training.config import ConfigError

WORDS = ("the king and the queen walk in the garden while rain falls on the old stone wall "
         "a fool sings of love and the night is long but morning comes").split()


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSMAMBA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        idx = torch.randint(len(WORDS), (320,), generator=g).tolist()
        lines = [" ".join(WORDS[j] for j in idx[k : k + 8]) for k in range(0, 320, 8)]
        (folder / f"play{i}.md").write_text(f"# Play {i}\n\n" + "\n".join(lines) + "\n")
    return folder


def _args(*argv):
    return build_parser().parse_args(["train", *argv])


TINY = ["--threads", "1", "--vocab_size", "300", "--seq_len", "32", "--batch_size", "2",
        "--eval_batches", "1", "--warmup_steps", "1", "--progress", "false",
        "--model.d_model", "32", "--model.d_ff", "64", "--model.chunk_size", "8",
        "--model.transpoints", "[0, 4, 8, 16]"]


def test_yaml_then_flags_win(tmp_path):
    yml = tmp_path / "run.yaml"
    yml.write_text("lr: 0.5\nmax_steps: 3\nmodel:\n  d_model: 48\n  n_heads: 4\n")
    cfg = config_from_args(_args("--config", str(yml), "--lr", "0.1", "--model.d_model", "32",
                                 "--seq-len", "64", "--resume"))
    assert cfg.lr == 0.1 and cfg.max_steps == 3 and cfg.seq_len == 64 and cfg.resume is True
    assert cfg.model == {"d_model": 32, "n_heads": 4}


def test_unknown_keys_are_rejected_with_suggestions(tmp_path, capsys):
    msg = r"unknown key '--lrr'.*Did you mean '--lr'.*Valid flags:.*--seq-len"
    with pytest.raises(ConfigError, match=msg):
        config_from_args(_args("--lrr", "0.1"))
    yml = tmp_path / "bad.yaml"
    yml.write_text("max_step: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'max_step'.*'max_steps'"):
        config_from_args(_args("--config", str(yml)))
    with pytest.raises(ConfigError, match="batch_size must be a whole number"):
        config_from_args(_args("--batch_size", "many"))
    # through the CLI: one line on stderr, exit code 2, no traceback
    assert main(["train", "--warmup_step", "3"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean '--warmup-steps'" in err and "Traceback" not in err


def test_clear_errors_end_to_end(tmp_path, corpus, capsys):
    out = ["--out_dir", str(tmp_path / "run")]
    assert main(["train", "--data", str(tmp_path / "missing"), *out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(corpus), *TINY, "--model.d_modle", "16", *out]) == 2
    assert "Did you mean 'd_model'" in capsys.readouterr().err
    assert main(["train", "--data", str(corpus), *TINY, "--seq_len", "300", *out]) == 2
    err = capsys.readouterr().err
    assert "seq_len=300 is longer than the model's max_seq_len=256" in err
    assert main(["train", "--data", str(corpus), "--preset", "transmamba-tin", *out]) == 2
    assert "Did you mean 'transmamba-tiny'" in capsys.readouterr().err


def test_train_causal_lm_resume_is_exact_and_checkpoint_loads(tmp_path, corpus):
    from transmamba.models.lm import CausalLM
    from transmamba.training.trainer import Trainer

    common = [*TINY, "--data", str(corpus), "--max_steps", "4", "--eval_every", "2"]
    quiet = dict(log=lambda m: None)
    full = Trainer(config_from_args(_args(*common, "--out_dir", str(tmp_path / "a"))), **quiet).fit()
    Trainer(config_from_args(_args(*common, "--out_dir", str(tmp_path / "b"))), log=lambda m: None,
            stop_at=2).fit()
    resumed = Trainer(config_from_args(_args(*common, "--out_dir", str(tmp_path / "b"), "--resume")),
                      log=lambda m: None).fit()
    assert resumed.train_losses == {s: full.train_losses[s] for s in (3, 4)}
    assert resumed.final_val_loss == full.final_val_loss
    model = CausalLM.from_pretrained(tmp_path / "b" / "last")
    assert model.config.vocab_size == full.stats["vocab_size"] and model.config.d_model == 32
    assert (tmp_path / "b" / "best" / "tokenizer.json").is_file()


def test_demo_small_run_shows_conversions(tmp_path, corpus, capsys):
    code = main(["demo", "--data", str(corpus), *TINY, "--max_steps", "2", "--eval_every", "2",
                 "--new_tokens", "24", "--out_dir", str(tmp_path / "demo"), "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "validation loss" in out and "== sample" in out
    for layer, p in ((2, 4), (4, 8), (6, 16)):
        assert f"layer {layer} (P={p}) folded its KV cache of {p} positions" in out
