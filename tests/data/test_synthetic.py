"""Synthetic task generators: layouts checked by hand on tiny cases, masks, seeding."""

import numpy as np
import pytest
import torch

from transmamba.data import synthetic as syn
from transmamba.data.synthetic import BOS, COPY, DIGIT0, IGNORE_INDEX, NL, NOISE, QUERY, SEP, SYMBOL0


def _parse_book(row, name_len, number_len):
    """name tuple -> number tuple, read line by line until the first QUERY."""
    row = row.tolist()
    assert row[0] == BOS
    book, i = {}, 1
    while row[i] != QUERY:
        line = row[i : i + name_len + number_len + 2]
        assert line[name_len] == SEP and line[-1] == NL
        name, number = tuple(line[:name_len]), tuple(line[name_len + 1 : -1])
        assert name not in book, "names must be distinct"
        book[name] = number
        i += len(line)
    return book, i


def test_phonebook_tiny_by_hand():
    b = syn.phonebook(2, 3, name_len=2, number_len=3, vocab_size=24, seed=0)
    assert b.input_ids.shape == (2, syn.phonebook_length(3, name_len=2, number_len=3)) == (2, 1 + 3 * 7 + 8)
    for r in range(2):
        row = b.input_ids[r]
        book, q = _parse_book(row, 2, 3)
        assert len(book) == 3
        # query line: QUERY name SEP number NL, and that number is the queried name's
        assert row[q] == QUERY and row[q + 3] == SEP and row[-1] == NL
        name = tuple(row[q + 1 : q + 3].tolist())
        answer = tuple(row[q + 4 : q + 7].tolist())
        assert book[name] == answer
        assert list(book).index(name) == int(b.meta["answer_entry"][r, 0])
        assert all(DIGIT0 <= d < DIGIT0 + 10 for d in answer)
        assert all(SYMBOL0 <= s < 24 for s in name)
        # labels: -100 except the 3 answer digits, where they equal the ids
        lab = b.labels[r]
        assert (lab[q + 4 : q + 7] == row[q + 4 : q + 7]).all()
        assert (lab[: q + 4] == IGNORE_INDEX).all() and (lab[q + 7 :] == IGNORE_INDEX).all()
    assert b.answer_positions(0).tolist() == [26, 27, 28]


def test_phonebook_many_queries_and_length_helper():
    b = syn.phonebook(4, 10, n_queries=3, seed=1)
    assert b.n_answers == 3
    assert (b.labels != IGNORE_INDEX).sum() == 4 * 3 * 4
    for r in range(4):
        assert len(set(b.meta["answer_entry"][r].tolist())) == 3
    n = syn.phonebook_entries_for_length(256)
    assert syn.phonebook_length(n) <= 256 < syn.phonebook_length(n + 1)
    assert syn.make_task("phonebook", 2, 256).seq_len <= 256


def test_mqar_tiny_by_hand():
    b = syn.mqar(3, 4, vocab_size=30, seed=0)
    n_keys, _ = syn.mqar_split(30)
    assert b.input_ids.shape == (3, 1 + 8 + 8)
    for r in range(3):
        row = b.input_ids[r].tolist()
        keys, values = row[1:9:2], row[2:9:2]
        assert len(set(keys)) == 4 and all(SYMBOL0 <= k < SYMBOL0 + n_keys for k in keys)
        assert all(SYMBOL0 + n_keys <= v < 30 for v in values)
        pairs = dict(zip(keys, values))
        for k in range(4):
            q, a = row[9 + 2 * k], row[10 + 2 * k]
            assert pairs[q] == a
            assert keys.index(q) == int(b.meta["key_index"][r, k])
            assert b.answer_index[r, 10 + 2 * k] == k and b.labels[r, 10 + 2 * k] == a
        assert (b.labels[r] != IGNORE_INDEX).sum() == 4


def test_selective_copy_tiny_by_hand():
    b = syn.selective_copy(2, 3, 10, vocab_size=22, seed=0)
    assert b.input_ids.shape == (2, 1 + 10 + 1 + 3)
    for r in range(2):
        row = b.input_ids[r]
        region = row[1:11]
        data = region[region != NOISE]
        assert data.numel() == 3 and row[11] == COPY
        assert (row[12:] == data).all() and (b.labels[r, 12:] == data).all()
        assert (b.labels[r, :12] == IGNORE_INDEX).all()
        assert (torch.nonzero(region != NOISE).flatten() == b.meta["positions"][r]).all()


@pytest.mark.parametrize("task", syn.TASKS)
def test_seeded_and_deterministic(task):
    a = syn.make_task(task, 3, 64, seed=5)
    b = syn.make_task(task, 3, 64, seed=5)
    c = syn.make_task(task, 3, 64, seed=6)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.input_ids, c.input_ids)
    # independent of torch's global RNG
    torch.manual_seed(123)
    d = syn.make_task(task, 3, 64, seed=5)
    assert torch.equal(a.input_ids, d.input_ids)
    assert a.input_ids.dtype == torch.long and a.input_ids.max() < syn.DEFAULT_VOCAB
    assert a.seq_len <= 64


def test_stream_gives_fresh_batches():
    s = syn.SyntheticStream("mqar", 2, 33, seed=0)
    x, y = next(s), next(s)
    assert not torch.equal(x.input_ids, y.input_ids)
    s2 = syn.SyntheticStream("mqar", 2, 33, seed=0)
    assert torch.equal(next(s2).input_ids, x.input_ids)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="distinct names"):
        syn.phonebook(1, 5, name_len=1, vocab_size=20)
    with pytest.raises(ValueError, match="holds no entry"):
        syn.phonebook_entries_for_length(8)
    with pytest.raises(ValueError, match="unknown task"):
        syn.make_task("nope", 1, 32)
    assert np.isclose(syn.chance_accuracy("phonebook")["exact_match"], 1e-4)


def test_causal_lm_trains_on_batches_directly():
    """labels go straight into CausalLM: its loss is the cross-entropy on the answer tokens only."""
    lm = pytest.importorskip("transmamba.models.lm")
    from transmamba.models.config import ModelConfig

    cfg = ModelConfig(vocab_size=syn.DEFAULT_VOCAB, d_model=16, pattern="T-", n_heads=2, d_state=8, headdim=8,
                      ngroups=2, chunk_size=16, transpoints=[16])
    model = lm.CausalLM(cfg)
    b = syn.phonebook(2, 4, seed=0)
    out = model(b.input_ids, labels=b.labels)
    pos = b.answer_positions(0)  # logits at pos-1 predict the digits at pos
    logp = torch.log_softmax(out.logits[:, pos - 1].float(), -1)
    want = -logp.gather(-1, b.input_ids[:, pos, None]).mean()
    assert torch.allclose(out.loss, want, atol=1e-5)
    out.loss.backward()
    assert model.embed.weight.grad.abs().sum() > 0
