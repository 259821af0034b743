"""Packing documents into fixed-length rows that remember where each document starts.

Every document's tokens get ``<|endoftext|>`` appended and all are concatenated into one stream, with a
parallel stream of document ids. Rows of ``T`` tokens are cut from it with stride ``T - 1``: consecutive
rows share one token, so every token after the first is a *target* exactly once (the model predicts
``labels[1:]`` from ``input_ids[:-1]``; ``labels[0]`` is never a target).

For a row with tokens ``x`` (T,) and document ids ``d`` (T,)::

    input_ids[j] = x[j]
    labels[j]    = x[j]   if j > 0 and d[j] == d[j-1]  else -100   # never predict across documents
    seq_idx[j]   = number of document starts in d[1..j]              # 0, 0, 0, 1, 1, 2, ... per row

``seq_idx`` is what attention masks, SSD, scans and the causal conv take to keep documents apart, so a
packed row computes exactly what each document would compute on its own (RoPE positions aside).
A padded tail (validation's last row) has document id -1 and labels -100.

The loader walks a per-epoch permutation (seeded by ``(seed, epoch)``), split across data-parallel ranks
by striding, and its position ``(epoch, cursor)`` is part of every checkpoint, so a resumed run sees
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from transmamba.data.text import DataError, load_documents, train_val_split
from transmamba.data.tokenizer import TextTokenizer, encode_documents, get_tokenizer

IGNORE_INDEX = -100


@dataclasses.dataclass
class PackedRows:
    """``tokens`` and ``doc_ids``, both (rows, T) int32; doc id -1 marks padding."""

    tokens: np.ndarray
    doc_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def batch(self, index: np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """input_ids, labels (int64) and seq_idx (int32), each (len(index), T)."""
        index = np.asarray(index, dtype=np.int64)
        return rows_to_batch(self.tokens[index], self.doc_ids[index])


def rows_to_batch(tokens: np.ndarray, doc_ids: np.ndarray) -> dict[str, torch.Tensor]:
    """Labels and seq_idx from token and document-id rows (b, T); see the module docstring."""
    same = np.zeros_like(doc_ids, dtype=bool)
    same[:, 1:] = doc_ids[:, 1:] == doc_ids[:, :-1]
    valid = same & (doc_ids >= 0)
    labels = np.where(valid, tokens, IGNORE_INDEX).astype(np.int64)
    starts = np.zeros_like(doc_ids, dtype=np.int32)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    seq_idx = np.cumsum(starts, axis=1, dtype=np.int32)
    return {
        "input_ids": torch.from_numpy(tokens.astype(np.int64)),
        "labels": torch.from_numpy(labels),
        "seq_idx": torch.from_numpy(seq_idx),
    }


def pack_documents(
    docs_tokens: list[np.ndarray], seq_len: int, *, eos_id: int | None, pad_last: bool = False
) -> PackedRows:
    """Concatenate documents (each followed by ``eos_id`` when given) and cut rows of ``seq_len``.

    Rows overlap by one token (stride ``seq_len - 1``). ``pad_last`` keeps the final partial row, padded
    with ``eos_id``/0 under document id -1; otherwise it is dropped.
    """
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2 (one input and one target), got {seq_len}")
    pieces, ids = [], []
    for i, toks in enumerate(docs_tokens):
        toks = np.asarray(toks, dtype=np.int32)
        if eos_id is not None:
            toks = np.concatenate([toks, np.array([eos_id], dtype=np.int32)])
        if len(toks) == 0:
            continue
        pieces.append(toks)
        ids.append(np.full(len(toks), i, dtype=np.int32))
    if not pieces:
        raise DataError("nothing to pack: every document is empty")
    stream = np.concatenate(pieces)
    doc_stream = np.concatenate(ids)
    stride = seq_len - 1
    n_full = (len(stream) - seq_len) // stride + 1 if len(stream) >= seq_len else 0
    covered = (n_full - 1) * stride + seq_len if n_full else 1  # stream[:covered] used (first: no target)
    n_rows = n_full + int(pad_last and len(stream) > covered)
    if n_rows == 0:
        raise DataError(
            f"the data holds {len(stream)} tokens, fewer than one row of seq_len={seq_len}; "
            "use more data or a smaller --seq_len"
        )
    need = (n_rows - 1) * stride + seq_len
    if need > len(stream):
        pad = need - len(stream)
        stream = np.concatenate([stream, np.full(pad, eos_id or 0, dtype=np.int32)])
        doc_stream = np.concatenate([doc_stream, np.full(pad, -1, dtype=np.int32)])
    starts = np.arange(n_rows, dtype=np.int64)[:, None] * stride + np.arange(seq_len)[None, :]
    return PackedRows(stream[starts], doc_stream[starts])


class PackedLoader:
    """Endless batches of packed rows: shuffled per epoch, sharded by rank, resumable.

    State: ``epoch`` and ``cursor`` (batches already taken in this epoch). Every rank sees the same
    number of batches per epoch (``rows // world_size // batch_size``).
    """

    def __init__(
        self, rows: PackedRows, batch_size: int, *, seed: int = 0, shuffle: bool = True,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        self.rows, self.batch_size, self.seed, self.shuffle = rows, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = len(rows) // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"only {len(rows)} training rows of {rows.seq_len} tokens for batch_size={batch_size} "
                f"x {world_size} rank(s); use more data, a smaller --batch_size or a smaller --seq_len"
            )
        self.epoch = 0
        self.cursor = 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            n = len(self.rows)
            rng = np.random.default_rng([self.seed, self.epoch])
            perm = rng.permutation(n) if self.shuffle else np.arange(n)
            self._order = perm[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        return self._order

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.cursor >= self.batches_per_epoch:
            self.epoch += 1
            self.cursor = 0
            self._order = None
        order = self._epoch_order()
        idx = order[self.cursor * self.batch_size : (self.cursor + 1) * self.batch_size]
        self.cursor += 1
        return self.rows.batch(idx)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "rows": len(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("rows", len(self.rows)) != len(self.rows):
            raise DataError(
                f"the checkpoint's data had {state['rows']} rows, this data has {len(self.rows)}: "
                "resume with the same data, tokenizer and seq_len"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = None


def iter_eval_batches(rows: PackedRows, batch_size: int, max_batches: int | None = None, *,
                      rank: int = 0, world_size: int = 1):
    """Validation batches in a fixed order (row i goes to rank i % world_size)."""
    idx = np.arange(rank, len(rows), world_size)
    n = -(-len(idx) // batch_size)
    if max_batches:
        n = min(n, max_batches)
    for b in range(n):
        chunk = idx[b * batch_size : (b + 1) * batch_size]
        if len(chunk):
            yield rows.batch(chunk)


# --------------------------------------------------------------------------------------------- pipeline


@dataclasses.dataclass
class TextData:
    """Everything the trainer needs from a text corpus."""

    tokenizer: TextTokenizer
    train: PackedRows
    val: PackedRows
    token_bytes: np.ndarray  # (vocab,) bytes per token, for bits per byte
    stats: dict


def prepare_text_data(
    path: str | None, *, seq_len: int, vocab_size: int, val_fraction: float = 0.05, seed: int = 0,
    text_field: str = "text", cache_dir: str | None = None, tokenizer_path: str | None = None,
    log: Callable[[str], None] | None = None,
) -> TextData:
    """Load, split by document, train (or load) the tokenizer on the training split, encode, pack."""
    docs = load_documents(path, text_field=text_field)
    train_docs, val_docs = train_val_split(docs, val_fraction, seed=seed)
    if tokenizer_path:
        tok = TextTokenizer.from_file(tokenizer_path)
    else:
        tok = get_tokenizer(train_docs, vocab_size, cache_dir=cache_dir, log=log)
    train_tok = encode_documents(tok, train_docs, cache_dir=cache_dir)
    val_tok = encode_documents(tok, val_docs, cache_dir=cache_dir)
    train = pack_documents(train_tok, seq_len, eos_id=tok.eos_id)
    val = pack_documents(val_tok, seq_len, eos_id=tok.eos_id, pad_last=True)
    stats = {
        "documents": len(docs),
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "val_names": [d.name for d in val_docs][:10],
        "train_tokens": int(sum(len(t) + 1 for t in train_tok)),
        "val_tokens": int(sum(len(t) + 1 for t in val_tok)),
        "train_bytes": int(sum(len(d.text.encode()) for d in train_docs)),
        "val_bytes": int(sum(len(d.text.encode()) for d in val_docs)),
        "train_rows": len(train),
        "val_rows": len(val),
        "vocab_size": tok.vocab_size,
    }
    return TextData(tok, train, val, tok.token_bytes(), stats)
