"""`transmamba info` (every preset) and `transmamba generate` (streaming from a saved checkpoint)."""

import json

import pytest
import torch

from transmamba import cli
from transmamba.models.presets import get_preset_info, list_presets


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one intra-op thread is far faster than two fighting over a shared 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_lists_presets(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    for name in list_presets():
        assert name in out


def test_info_every_preset(capsys):
    for name in list_presets():
        code, out, _ = run_cli(capsys, "info", "--preset", name, "--context", "4096")
        assert code == 0
        assert get_preset_info(name).config().pattern in out
        assert "parameters" in out and "per sequence at 4096 tokens" in out


def test_info_json_and_cache_growth(capsys):
    _, out, _ = run_cli(capsys, "info", "--preset", "mamba2-hybrid-8b", "--json", "--context", "1024")
    d = json.loads(out)
    assert d["layers_by_kind"] == {"mamba2": 24, "mlp": 28, "attention": 4}
    _, out2, _ = run_cli(capsys, "info", "--preset", "mamba2-hybrid-8b", "--json", "--context", "2048")
    d2 = json.loads(out2)
    # only the 4 attention layers grow: 2 (K,V) * 8 kv heads * 128 dims * 2 bytes per token each
    assert d2["cache_bytes_per_sequence"] - d["cache_bytes_per_sequence"] == 4 * 2 * 8 * 128 * 2 * 1024
    _, out3, _ = run_cli(capsys, "info", "--preset", "transmamba-1.5b", "--json", "--context", "16384")
    _, out4, _ = run_cli(capsys, "info", "--preset", "transmamba-1.5b", "--json", "--context", "32768")
    assert json.loads(out3)["cache_bytes_per_sequence"] == json.loads(out4)["cache_bytes_per_sequence"]


def test_info_unknown_preset(capsys):
    assert cli.main(["info", "--preset", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset" in err and err.count("\n") == 1


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


def test_generate_streams_from_checkpoint(tmp_path, capsys):
    from transmamba.models.lm import CausalLM

    tok = _tokenizer(tmp_path / "tokenizer.json")
    model = CausalLM.from_preset("transmamba-tiny", vocab_size=tok.get_vocab_size())
    model.save_pretrained(tmp_path)
    code, out, _ = run_cli(capsys, "generate", "--checkpoint", str(tmp_path), "--prompt", "to be",
                           "--max-new-tokens", "8", "--seed", "0", "--top-k", "20", "--no-stop")
    assert code == 0 and out.startswith("to be") and len(out) > len("to be\n")
    _, again, _ = run_cli(capsys, "generate", "--checkpoint", str(tmp_path), "--prompt", "to be",
                          "--max-new-tokens", "8", "--seed", "0", "--top-k", "20", "--no-stop")
    assert again == out  # seeded
    code, out3, _ = run_cli(capsys, "generate", "--checkpoint", str(tmp_path), "--prompt", "to be",
                            "--max-new-tokens", "4", "--greedy", "--transpoints", "0,1,2,3")
    assert code == 0 and out3.startswith("to be")
    assert cli.main(["generate", "--checkpoint", str(tmp_path), "--prompt", "a", "--transpoints", "1,2"]) == 2
    assert "4 TransMamba layers" in capsys.readouterr().err


def test_generate_without_tokenizer_is_a_clear_error(tmp_path, capsys):
    from transmamba.models.lm import CausalLM

    CausalLM.from_preset("mamba2-tiny").save_pretrained(tmp_path)
    assert cli.main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hi"]) == 2
    assert "no tokenizer at" in capsys.readouterr().err


def test_help_explains_options(capsys):
    for cmd in ("info", "generate"):
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "--" in out
        if cmd == "generate":
            for opt in ("--checkpoint", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                        "--seed"):
                assert opt in out
