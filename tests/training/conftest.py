"""A small stand-in language model (the CausalLM call signature) and a tiny text corpus."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F


class StandInLM(nn.Module):
    """Embedding -> causal mean over the document so far (honours seq_idx) -> MLP -> logits."""

    def __init__(self, vocab_size: int, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d)
        self.mlp = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, vocab_size))
        self.nan_at_call: int | None = None  # test hook: return a NaN loss on this forward call
        self.calls = 0

    def forward(self, input_ids, *, seq_idx=None, labels=None):
        self.calls += 1
        h = self.emb(input_ids)  # (b, t, d)
        t = input_ids.shape[1]
        if seq_idx is None:
            seq_idx = torch.zeros_like(input_ids)
        same = seq_idx[:, :, None] == seq_idx[:, None, :]  # (b, t, t)
        causal = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
        w = (same & causal).float()
        ctx = (w @ h) / w.sum(-1, keepdim=True)
        logits = self.mlp(torch.cat([h, ctx], -1))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
            if self.nan_at_call is not None and self.calls >= self.nan_at_call:
                loss = loss * float("nan")
        return types.SimpleNamespace(logits=logits, loss=loss, aux_loss=torch.zeros(()))


@pytest.fixture
def tiny_corpus(tmp_path):
    """A folder of 12 small text documents (the vocabulary of a few sentences, varied)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    words = ("the king and the queen walk in the garden while rain falls on the old stone wall "
             "a fool sings of love and the night is long but morning comes").split()
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        idx = torch.randint(len(words), (400,), generator=g).tolist()
        lines = [" ".join(words[j] for j in idx[k : k + 8]) for k in range(0, 400, 8)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def standin():
    """The StandInLM class (fixture, since test folders are not packages)."""
    return StandInLM
