"""Training data for the synthetic recall tasks (PhoneBook, MQAR, selective copying), in the shape the
trainer reads from text (`data.packing.TextData`), so `transmamba train --task mqar` trains a model that
`transmamba eval mqar` then scores.

Rows come from `data.synthetic.make_task` at ``seq_len`` tokens: ``train_rows`` rows from ``seed`` and
``val_rows`` from a disjoint seed. Labels are the task's answer tokens only (-100 elsewhere), so the loss
is the cross entropy of the answers given everything before them; ``seq_idx`` is 0 (one document per row).
Token ids are the task's own (no tokenizer): the model's vocabulary is ``vocab_size``, and "bits per byte"
is reported per answer token (each token counts as one byte).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from transmamba.data.synthetic import TASKS, make_task
from transmamba.training.config import ConfigError

VAL_SEED_OFFSET = 1_000_003  # validation rows come from a seed no training seed reaches


@dataclasses.dataclass
class RecallRows:
    """Rows of one task: input_ids and labels (rows, T) int64."""

    input_ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def batch(self, index) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        ids = self.input_ids[idx]
        return {"input_ids": ids, "labels": self.labels[idx],
                "seq_idx": torch.zeros(ids.shape, dtype=torch.int32)}


@dataclasses.dataclass
class TaskVocabulary:
    """Stands in for the text tokenizer: the task's ids need none. ``save`` writes task.json (what the rows
    are), not a tokenizer.json, so nothing later mistakes the ids for text."""

    vocab_size: int
    task: str

    def save(self, path) -> None:
        Path(path).with_name("task.json").write_text(json.dumps({"task": self.task,
                                                                 "vocab_size": self.vocab_size}) + "\n")


@dataclasses.dataclass
class RecallData:
    tokenizer: TaskVocabulary
    train: RecallRows
    val: RecallRows
    token_bytes: np.ndarray
    stats: dict


def _rows(task: str, n: int, seq_len: int, vocab_size: int, seed: int) -> RecallRows:
    batch = make_task(task, n, seq_len, vocab_size=vocab_size, seed=seed)
    ids = batch.input_ids.long()
    if ids.shape[1] < seq_len:  # a task laid out shorter than seq_len: pad with ignored tokens
        pad = seq_len - ids.shape[1]
        ids = torch.cat([ids, ids.new_zeros(ids.shape[0], pad)], dim=1)
        labels = torch.cat([batch.labels.long(), batch.labels.new_full((ids.shape[0], pad), -100)], dim=1)
    else:
        labels = batch.labels.long()
    return RecallRows(ids, labels)


def prepare_recall_data(task: str, *, seq_len: int, vocab_size: int, train_rows: int, val_rows: int = 256,
                        seed: int = 0) -> RecallData:
    """Fixed, seeded train and validation rows of ``task`` (see the module docstring)."""
    if task not in TASKS:
        raise ConfigError(f"task must be text or one of {', '.join(TASKS)}, got {task!r}")
    try:
        train = _rows(task, train_rows, seq_len, vocab_size, seed)
        val = _rows(task, val_rows, seq_len, vocab_size, seed + VAL_SEED_OFFSET)
    except ValueError as err:
        raise ConfigError(f"--task {task} at --seq-len {seq_len} with --vocab-size {vocab_size}: {err}"
                          ) from None
    stats = {"task": task, "train_documents": len(train), "val_documents": len(val),
             "train_tokens": int((train.labels != -100).sum()),
             "val_tokens": int((val.labels != -100).sum()),
             "train_rows": len(train), "val_rows": len(val), "vocab_size": vocab_size}
    token_bytes = np.ones(vocab_size, dtype=np.int64)
    return RecallData(TaskVocabulary(vocab_size, task), train, val, token_bytes, stats)
