"""Packing never mixes documents: labels are -100 at every boundary and seq_idx counts documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transmamba.data.packing import PackedLoader, iter_eval_batches, pack_documents
from transmamba.data.text import DataError

EOS = 0


def _docs(seed=0, n=9):
    rng = np.random.default_rng(seed)
    # each document's tokens carry its id (100 * doc + k) so we can tell which document a token is from
    return [np.array([100 * (i + 1) + k for k in range(int(rng.integers(1, 40)))], dtype=np.int32)
            for i in range(n)]


@pytest.mark.parametrize("seq_len", [2, 5, 16, 64])
def test_packing_never_crosses_documents(seq_len):
    docs = _docs()
    rows = pack_documents(docs, seq_len, eos_id=EOS, pad_last=True)
    b = rows.batch(np.arange(len(rows)))
    ids, labels, seq_idx = b["input_ids"], b["labels"], b["seq_idx"]
    assert ids.shape == labels.shape == seq_idx.shape == (len(rows), seq_len)
    assert seq_idx.dtype == torch.int32 and labels.dtype == torch.int64
    doc = torch.from_numpy(rows.doc_ids)
    for r in range(len(rows)):
        assert labels[r, 0] == -100
        for j in range(1, seq_len):
            new_doc = bool(doc[r, j] != doc[r, j - 1])
            padding = bool(doc[r, j] < 0)
            assert (labels[r, j] == -100) == (new_doc or padding)
            if not (new_doc or padding):
                assert labels[r, j] == ids[r, j]
            assert seq_idx[r, j] == seq_idx[r, j - 1] + int(new_doc)
        # seq_idx groups exactly the positions of one document
        for s in seq_idx[r].unique():
            assert len(doc[r][seq_idx[r] == s].unique()) == 1
    # every token except a document's first is a target exactly once (rows overlap by one token)
    targets = sorted(labels[labels != -100].tolist())
    expected = sorted(t for d in docs for t in [*d[1:].tolist(), EOS])
    assert targets == expected


def test_packing_too_little_data():
    with pytest.raises(DataError, match="fewer than one row"):
        pack_documents([np.arange(3)], 64, eos_id=EOS)


def test_loader_resume_and_shards():
    rows = pack_documents(_docs(n=40), 8, eos_id=EOS)
    a = PackedLoader(rows, 3, seed=1)
    seen = [a.next_batch()["input_ids"] for _ in range(a.batches_per_epoch + 3)]  # crosses an epoch
    b = PackedLoader(rows, 3, seed=1)
    for _ in range(5):
        b.next_batch()
    c = PackedLoader(rows, 3, seed=1)
    c.load_state_dict(b.state_dict())
    for k in range(5, len(seen)):
        assert torch.equal(c.next_batch()["input_ids"], seen[k])
    # two ranks see disjoint rows of each epoch
    r0 = PackedLoader(rows, 2, seed=1, rank=0, world_size=2)
    r1 = PackedLoader(rows, 2, seed=1, rank=1, world_size=2)
    assert r0.batches_per_epoch == r1.batches_per_epoch
    s0 = {tuple(x) for _ in range(r0.batches_per_epoch) for x in r0.next_batch()["input_ids"].tolist()}
    s1 = {tuple(x) for _ in range(r1.batches_per_epoch) for x in r1.next_batch()["input_ids"].tolist()}
    assert not s0 & s1


def test_eval_batches_cover_all_rows():
    rows = pack_documents(_docs(), 8, eos_id=EOS, pad_last=True)
    got = torch.cat([b["input_ids"] for b in iter_eval_batches(rows, 4)])
    assert torch.equal(got, torch.from_numpy(rows.tokens.astype(np.int64)))
