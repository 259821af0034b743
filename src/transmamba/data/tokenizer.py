"""Byte-level BPE tokenizer trained locally with HF ``tokenizers``, cached on disk.

Byte-level means every byte string is encodable (no unknown token): the base alphabet is the 256 bytes
(GPT-2's printable byte-to-unicode map) and BPE merges are learnt on top, up to ``vocab_size`` entries
including one special token, ``<|endoftext|>``, which the packer appends to every document.

Trained tokenizers are cached under ``$TRANSMAMBA_CACHE`` (default ``~/.cache/transmamba``) at
``tokenizers/<key>/tokenizer.json`` with ``key = sha256(corpus hash, vocab size, recipe version)``, so a
second run on the same corpus loads in milliseconds. Token arrays of encoded documents are cached the same
way (``tokens/<key>.npz``), keyed by the corpus and the tokenizer's own JSON. Every checkpoint stores the
tokenizer beside the weights as ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from transmamba.data.text import DataError, Document, corpus_hash

EOS = "<|endoftext|>"
_RECIPE = "bytelevel-bpe-v1"
MIN_VOCAB = 256 + 1  # the byte alphabet plus <|endoftext|>


def cache_root() -> Path:
    """``$TRANSMAMBA_CACHE`` or ``~/.cache/transmamba``."""
    return Path(os.environ.get("TRANSMAMBA_CACHE", Path.home() / ".cache" / "transmamba")).expanduser()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class TextTokenizer:
    """Thin wrapper over a ``tokenizers.Tokenizer``: encode / decode / save and per-token byte counts."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        eos = tokenizer.token_to_id(EOS)
        if eos is None:
            raise DataError(f"tokenizer has no {EOS} token")
        self.eos_id: int = eos

    # ---- construction
    @classmethod
    def from_file(cls, path: str | Path) -> TextTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"no tokenizer at {path}")
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> TextTokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < MIN_VOCAB:
            raise DataError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes + {EOS}), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    # ---- use
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (``path`` may be a folder or the file name)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "tokenizer.json"
        _atomic_write_bytes(path, self.to_json().encode())
        return path

    def token_bytes(self) -> np.ndarray:
        """(vocab,) int64: how many bytes of text each token stands for (special tokens: 0).

        With the byte-level alphabet every character of a token's string is one byte, so this is the
        length of the token's string. Used for bits per byte.
        """
        out = np.zeros(self.vocab_size, dtype=np.int64)
        special = {EOS}
        for token, idx in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if idx < len(out) and token not in special:
                out[idx] = len(token)
        return out

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def get_tokenizer(
    docs: list[Document], vocab_size: int, *, cache_dir: str | Path | None = None, log=None
) -> TextTokenizer:
    """A tokenizer for ``docs``: loaded from the cache when trained before, else trained and cached."""
    root = Path(cache_dir) if cache_dir else cache_root()
    key = hashlib.sha256(f"{_RECIPE}\x00{vocab_size}\x00{corpus_hash(docs)}".encode()).hexdigest()[:24]
    path = root / "tokenizers" / key / "tokenizer.json"
    if path.is_file():
        try:
            return TextTokenizer.from_file(path)
        except Exception:  # a corrupt cache entry is retrained, never fatal
            pass
    if log:
        log(f"training a byte-level BPE tokenizer (vocab {vocab_size}) on {len(docs)} documents")
    tok = TextTokenizer.train((d.text for d in docs), vocab_size)
    try:
        tok.save(path)
    except OSError:
        pass  # a read-only cache only costs time
    return tok


def encode_documents(
    tok: TextTokenizer, docs: list[Document], *, cache_dir: str | Path | None = None
) -> list[np.ndarray]:
    """Token ids of each document (int32 arrays, no EOS yet), cached by corpus and tokenizer."""
    root = Path(cache_dir) if cache_dir else cache_root()
    key = hashlib.sha256(f"{corpus_hash(docs)}\x00{tok.fingerprint()}".encode()).hexdigest()[:24]
    path = root / "tokens" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                flat, lengths = z["flat"], z["lengths"]
            if len(lengths) == len(docs):
                return list(np.split(flat, np.cumsum(lengths)[:-1]))
        except Exception:
            pass
    arrays = [np.asarray(ids, dtype=np.int32) for ids in tok.encode_batch([d.text for d in docs])]
    try:
        import io

        buf = io.BytesIO()
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
        np.savez(buf, flat=flat, lengths=lengths)
        _atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass
    return arrays
