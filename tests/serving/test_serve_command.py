"""`transmamba serve --checkpoint DIR`: the command's loader with a saved model and its tokenizer.json, then
one request through the app in-process (Starlette's TestClient, lifespan included)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from transmamba.cli import build_parser  # noqa: E402
from transmamba.commands.serve import load_model  # noqa: E402
from transmamba.data.tokenizer import TextTokenizer  # noqa: E402
from transmamba.models.lm import CausalLM  # noqa: E402
from transmamba.serving import Engine, Limits, create_app  # noqa: E402

TEXT = ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind to suffer"] * 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    tok = TextTokenizer.train(TEXT, 300)
    torch.manual_seed(0)
    model = CausalLM.from_preset("transmamba-tiny", vocab_size=tok.vocab_size, init_std=0.5)
    model.save_pretrained(path)
    tok.save(path)
    return path, tok


def test_checkpoint_served_text_equals_generate(checkpoint):
    from fastapi.testclient import TestClient

    path, tok = checkpoint
    args = build_parser().parse_args(["serve", "--checkpoint", str(path), "--transpoints", "0,2,4,8"])
    model, tokenizer, name = load_model(args)
    assert name == path.name and [m.transpoint for m in model.transmamba_layers()] == [0, 2, 4, 8]
    ids = tok.encode("To be, or")
    want = model.generate([ids], 12, greedy=True, stop_tokens=[tok.eos_id])[0][len(ids):]
    engine = Engine(model, tokenizer, name=name, limits=Limits(max_tokens=16))
    with TestClient(create_app(engine)) as client:
        r = client.post("/v1/completions", json={"prompt": "To be, or", "max_tokens": 12, "temperature": 0,
                                                 "return_token_ids": True})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["token_ids"] == want
        assert choice["text"] == tok.decode([t for t in want if t != tok.eos_id])
        assert r.json()["transpoints"] == [0, 2, 4, 8]


def test_bad_flags_exit_with_one_line(tmp_path, checkpoint):
    path, _ = checkpoint
    parser = build_parser()
    with pytest.raises(SystemExit, match="does not exist"):
        load_model(parser.parse_args(["serve", "--checkpoint", str(tmp_path / "none")]))
    with pytest.raises(SystemExit, match="--transpoints"):
        load_model(parser.parse_args(["serve", "--checkpoint", str(path), "--transpoints", "1,2"]))
    with pytest.raises(SystemExit, match="no tokenizer"):
        missing = str(tmp_path / "x")
        load_model(parser.parse_args(["serve", "--checkpoint", str(path), "--tokenizer", missing]))
    args = parser.parse_args(["serve", "--preset", "transmamba-tiny", "--max-batch", "0"])
    with pytest.raises(SystemExit, match="--max-batch must be >= 1"):
        args.func(args)
