"""`transmamba eval ...` on a tiny saved checkpoint (random weights: only the plumbing is checked)."""

import json

import pytest
import torch

from transmamba import cli

lm = pytest.importorskip("transmamba.models.lm")
config = pytest.importorskip("transmamba.models.config")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    cfg = config.ModelConfig(vocab_size=300, d_model=16, pattern="T-T-", n_heads=2, d_state=8, headdim=8,
                             ngroups=2, chunk_size=16, transpoints=[24, 0], max_seq_len=512)
    lm.CausalLM(cfg).save_pretrained(str(d))
    return d


@pytest.mark.parametrize("task,extra", [
    ("phonebook", ["--name-len", "2", "--number-len", "3", "--generate"]),
    ("mqar", []),
    ("selective-copy", ["--n-tokens", "4", "--transpoints", "V9"]),
])
def test_eval_recall_cli(ckpt, tmp_path, capsys, task, extra):
    out = tmp_path / "r.json"
    rc = cli.main(["eval", task, "--checkpoint", str(ckpt), "--lengths", "40", "64", "--n-rows", "4",
                   "--device", "cpu", "--json", str(out), *extra])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["length"] for r in res["results"]] == [40, 64]
    for r in res["results"]:
        assert 0.0 <= r["token_accuracy"] <= 1.0 and 0.0 <= r["answer_accuracy"] <= 1.0
        if task == "phonebook":
            assert 0.0 <= r["generate_exact_match"] <= 1.0
    assert "length" in capsys.readouterr().out


def test_eval_transpoints_list_and_perplexity(ckpt, tmp_path, capsys):
    from transmamba.data.tokenizer import TextTokenizer

    text = "To be, or not to be, that is the question.\n" * 40
    TextTokenizer.train([text], 280).save(ckpt / "tokenizer.json")
    data = tmp_path / "t.txt"
    data.write_text(text)
    out = tmp_path / "p.json"
    rc = cli.main(["eval", "perplexity", "--checkpoint", str(ckpt), "--data", str(data), "--seq-len", "32",
                   "--device", "cpu", "--transpoints", "0,0", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["transpoints"] == [0, 0] and res["tokens"] > 0 and res["perplexity"] > 1.0
    assert "perplexity" in capsys.readouterr().out


def test_eval_bad_checkpoint(tmp_path, capsys):
    assert cli.main(["eval", "mqar", "--checkpoint", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "holds no config.json" in err and err.count("\n") == 1
