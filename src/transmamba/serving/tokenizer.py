"""Tokenizers the server can use: a checkpoint's tokenizer.json, or plain UTF-8 bytes for random-weight
presets (`transmamba serve --preset NAME`), whose vocabularies start with the 256 byte values."""

from __future__ import annotations

from pathlib import Path


class ByteTokenizer:
    """Token i < 256 is byte i; `eos_id` = 256 when the vocabulary has room for it, else None. Ids >= 256
    decode to nothing; invalid UTF-8 decodes to U+FFFD (the streaming detokeniser waits for more bytes)."""

    def __init__(self, vocab_size: int):
        if vocab_size < 256:
            raise ValueError(f"ByteTokenizer: the model's vocabulary ({vocab_size}) is smaller than the 256 "
                             "byte values; give the checkpoint's tokenizer.json")
        self.vocab_size = vocab_size
        self.eos_id: int | None = 256 if vocab_size > 256 else None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


def load_tokenizer(path: str | Path | None, vocab_size: int):
    """`TextTokenizer` from a tokenizer.json path, or `ByteTokenizer(vocab_size)` when path is None."""
    if path is None:
        return ByteTokenizer(vocab_size)
    from transmamba.data.tokenizer import TextTokenizer

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"serve: no tokenizer at {p} (HF `tokenizers` JSON, as the trainer saves)")
    return TextTokenizer.from_file(p)


__all__ = ["ByteTokenizer", "load_tokenizer"]
