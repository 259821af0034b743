"""One error path for every command: a user mistake ends in one line on stderr (what was wrong and the fix)
and exit code 2, never a traceback; one flag spelling (dashes, underscores as aliases); did-you-mean on every
parser; `--checkpoint` and `CausalLM.from_pretrained` take a run folder or a checkpoint folder."""

from __future__ import annotations

import json

import pytest
import torch

import transmamba
from transmamba import cli
from transmamba.models.lm import CausalLM


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _tokenizer(path, vocab=300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["to be or not to be, that is the question"] * 20, trainer)
    tok.save(str(path))
    return tok


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A run-folder layout: run/checkpoints/step-000001/{config.json, model.safetensors, tokenizer.json}
    with run/last pointing at it (what `transmamba train` writes)."""
    run = tmp_path_factory.mktemp("run")
    step = run / "checkpoints" / "step-000001"
    step.mkdir(parents=True)
    tok = _tokenizer(step / "tokenizer.json")
    torch.manual_seed(0)
    CausalLM.from_preset("transmamba-tiny", vocab_size=tok.get_vocab_size(),
                         max_seq_len=128).save_pretrained(step)
    (step / "trainer_state.json").write_text(json.dumps({"step": 1}))
    (run / "last").symlink_to("checkpoints/step-000001")
    return run


def _one_line_error(capsys, argv, code=2):
    rc = cli.main(argv)
    cap = capsys.readouterr()
    assert rc == code, (argv, rc, cap.err)
    lines = [x for x in cap.err.splitlines() if x.strip()]
    assert len(lines) == 1, (argv, cap.err)
    assert "Traceback" not in cap.err + cap.out
    return lines[0]


# one bad input per command (and the expected words of its message)
BAD = [
    (["trian"], "did you mean train"),
    (["info", "--preset", "nosuch"], "unknown preset"),
    (["info", "--context", "-1"], "expected a whole number in [0, "),
    (["train", "--max-steps", "2.5"], "whole number"),
    (["train", "--lr", "nan"], "lr must be a finite number"),
    (["train", "--min-lr-ratio", "-1"], "min_lr_ratio must be in [0, 1]"),
    (["train", "--grad-clip", "-1"], "grad_clip must be >= 0"),
    (["train", "--max_stepz", "3"], "Did you mean '--max-steps'"),
    (["demo", "--new-tokens", "-5"], "expected a whole number in [1, 100000]"),
    (["generate", "--checkpoint", "{tmp}/nosuch", "--prompt", "a"], "no such folder"),
    (["generate", "--checkpoint", "{ckpt}", "--prompt", "a", "--top-p", "1.5"], "(0, 1]"),
    (["generate", "--checkpoint", "{ckpt}", "--prompt", "a", "--temperature", "0"], "> 0"),
    (["generate", "--checkpoint", "{ckpt}", "--prompt", "a", "--max-new-tokens", "1000000000"],
     "max_seq_len"),
    (["generate", "--checkpoint", "{ckpt}", "--prompt", "a", "--transpoints", "V99"], "V99"),
    (["generate", "--checkpoint", "{ckpt}", "--prompt", "a", "--transpoints", "0,4,8,99999"], "max_seq_len"),
    (["generate", "--checkpoint", "{ckpt}", "--prompt", "a", "--max_new_tokenz", "3"],
     "did you mean --max-new-tokens"),
    (["eval", "phonbook"], "did you mean phonebook"),
    (["eval", "perplexity", "--checkpoint", "{ckpt}", "--data", "{tmp}/nosuch.txt"], "does not exist"),
    (["eval", "perplexity", "--checkpoint", "{ckpt}", "--data", "{tmp}/empty.txt"], ""),
    (["eval", "phonebook", "--checkpoint", "{ckpt}", "--lengths", "100000", "--device", "cpu"],
     "max_seq_len"),
    (["eval", "mqar", "--checkpoint", "{ckpt}", "--transpoints", "V99", "--device", "cpu"], "V99"),
    (["bench", "--tokens", "2.5"], "whole number"),
    (["bench", "--runner", "{tmp}/nosuch.py", "--list"], "not found"),
    (["forecast", "train", "--lr", "nan"], "finite"),
    (["forecast", "train", "--horizon", "0"], "[1, 100000]"),
    (["forecast", "eval", "--checkpoint", "{ckpt}/last"], "not a forecast checkpoint"),
    (["forecast", "eval", "--checkpoint", "{tmp}/nosuch"], "forecast checkpoint"),
    (["export", "--checkpoint", "{tmp}/nosuch", "--out", "{tmp}/e"], "neither a run folder"),
    (["plan", "--checkpoint", "{ckpt}", "--budget", "lots"], "lots"),
    (["convert", "{tmp}/nosuch", "{tmp}/c"], "no such folder"),
    (["convert", "{ckpt}", "{tmp}/c", "--to", "onnx"], "unknown choice"),
    (["distill", "--teacher", "{tmp}/nosuch", "--out-dir", "{tmp}/d"], "--teacher"),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_every_command_ends_bad_input_in_one_line(argv, words, ckpt, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    argv = [a.format(ckpt=ckpt, tmp=tmp_path) for a in argv]
    line = _one_line_error(capsys, argv)
    assert words in line, line
    assert not (tmp_path / "e").exists() and not (tmp_path / "c").exists()


def test_cuda_without_a_gpu_is_one_line(ckpt, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for argv in (["generate", "--checkpoint", str(ckpt), "--prompt", "a", "--device", "cuda"],
                 ["eval", "mqar", "--checkpoint", str(ckpt), "--device", "cuda"]):
        assert "no CUDA GPU" in _one_line_error(capsys, argv)


def test_underscore_aliases_and_run_folders_work_everywhere(ckpt, capsys):
    rc = cli.main(["generate", "--checkpoint", str(ckpt), "--prompt", "to be", "--max_new_tokens", "3",
                   "--seed", "0", "--no_stop"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("to be")
    rc = cli.main(["eval", "mqar", "--checkpoint", str(ckpt), "--n_rows", "2", "--lengths", "64",
                   "--device", "cpu", "--no_progress"])
    assert rc == 0 and "token_acc" in capsys.readouterr().out
    # --help lists one spelling (dashes)
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    helptext = capsys.readouterr().out
    assert "--max-steps" in helptext and "--max_steps" not in helptext


def test_from_pretrained_takes_a_run_folder_returns_eval_mode(ckpt):
    model = CausalLM.from_pretrained(ckpt)
    assert not model.training
    ref = CausalLM.from_pretrained(ckpt / "checkpoints" / "step-000001")
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert "CausalLM" in dir(transmamba) and "ModelConfig" in dir(transmamba)


def test_warnings_are_one_line(ckpt, capsys):
    """A recall eval on a model never trained for it says so (chance-level accuracy), in one line."""
    rc = cli.main(["eval", "mqar", "--checkpoint", str(ckpt), "--n-rows", "4", "--lengths", "64",
                   "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0
    warn = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(warn) == 1 and "not trained on mqar" in warn[0] and "transmamba train --task mqar" in warn[0]
