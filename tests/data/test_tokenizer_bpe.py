"""Byte-level BPE: round trips any text, byte counts per token, cached by corpus and vocab size."""

from __future__ import annotations

import pytest

from transmamba.data.text import DataError, Document
from transmamba.data.tokenizer import TextTokenizer, encode_documents, get_tokenizer

LINE = "To be, or not to be, that is the question:\n"
DOCS = [Document(f"d{i}", LINE * 20 + f"doc {i}\n") for i in range(5)]


def test_train_roundtrip_bytes_and_cache(tmp_path, monkeypatch):
    tok = get_tokenizer(DOCS, 300, cache_dir=tmp_path)
    assert tok.vocab_size <= 300 and tok.eos_id is not None
    text = "Whether 'tis nobler — café 😀\n\ttabs"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode())
    assert tok.token_bytes()[tok.eos_id] == 0
    # second call: loaded from the cache (training would raise)
    monkeypatch.setattr(TextTokenizer, "train", classmethod(lambda cls, *a, **k: pytest.fail("retrained")))
    again = get_tokenizer(DOCS, 300, cache_dir=tmp_path)
    assert again.encode(text) == ids
    # saved beside checkpoints as tokenizer.json, loadable
    path = tok.save(tmp_path / "ckpt")
    assert path.name == "tokenizer.json" and TextTokenizer.from_file(tmp_path / "ckpt").encode(text) == ids


def test_other_vocab_size_is_another_cache_entry(tmp_path):
    a = get_tokenizer(DOCS, 280, cache_dir=tmp_path)
    b = get_tokenizer(DOCS, 300, cache_dir=tmp_path)
    assert a.vocab_size < b.vocab_size
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2


def test_encode_documents_cached(tmp_path):
    tok = get_tokenizer(DOCS, 300, cache_dir=tmp_path)
    first = encode_documents(tok, DOCS, cache_dir=tmp_path)
    second = encode_documents(tok, DOCS, cache_dir=tmp_path)
    assert [a.tolist() for a in first] == [b.tolist() for b in second]
    assert first[0].tolist() == tok.encode(DOCS[0].text)


def test_vocab_too_small():
    with pytest.raises(DataError, match="at least 257"):
        TextTokenizer.train(["abc"], 100)
