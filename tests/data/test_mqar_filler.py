"""MQAR with filler (`mqar_filler`): layout read back by hand, answers, seeding, and the scorer's extremes
(an oracle scores 1, a constant model scores its answer frequency, i.e. chance in expectation)."""

import numpy as np
import pytest
import torch

from transmamba.data import synthetic as syn
from transmamba.data.synthetic import BOS, IGNORE_INDEX, NOISE, SYMBOL0
from transmamba.eval import recall


@pytest.mark.parametrize("filler", [0, 5])
def test_layout_by_hand(filler):
    n, m, vocab = 4, 3, 30
    b = syn.mqar_filler(3, n, filler=filler, n_queries=m, vocab_size=vocab, seed=0)
    n_keys, _ = syn.mqar_split(vocab)
    q0 = 1 + 2 * n + filler
    assert b.input_ids.shape == (3, q0 + 2 * m)
    assert b.task == "mqar" and int(b.meta["filler"][0]) == filler
    for r in range(3):
        row = b.input_ids[r].tolist()
        assert row[0] == BOS
        keys, values = row[1 : 1 + 2 * n : 2], row[2 : 2 + 2 * n : 2]
        assert len(set(keys)) == n and all(SYMBOL0 <= k < SYMBOL0 + n_keys for k in keys)
        assert all(SYMBOL0 + n_keys <= v < vocab for v in values)
        assert row[1 + 2 * n : q0] == [NOISE] * filler
        pairs = dict(zip(keys, values))
        asked = []
        for k in range(m):
            q, a = row[q0 + 2 * k], row[q0 + 2 * k + 1]
            assert pairs[q] == a
            asked.append(keys.index(q))
            assert b.answer_index[r, q0 + 2 * k + 1] == k and b.labels[r, q0 + 2 * k + 1] == a
        assert asked == b.meta["key_index"][r].tolist() and len(set(asked)) == m
        assert (b.labels[r] != IGNORE_INDEX).sum() == m


def test_seeded_fresh_and_errors():
    a = syn.mqar_filler(4, 6, filler=3, vocab_size=64, seed=7)
    b = syn.mqar_filler(4, 6, filler=3, vocab_size=64, seed=7)
    c = syn.mqar_filler(4, 6, filler=3, vocab_size=64, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    rng = np.random.default_rng(0)
    first, second = syn.mqar_filler(2, 3, seed=rng), syn.mqar_filler(2, 3, seed=rng)
    assert not torch.equal(first.input_ids, second.input_ids)
    with pytest.raises(ValueError, match="distinct keys"):
        syn.mqar_filler(1, 40, vocab_size=64)
    with pytest.raises(ValueError, match="filler"):
        syn.mqar_filler(1, 2, filler=-1)
    with pytest.raises(ValueError, match="n_queries"):
        syn.mqar_filler(1, 2, n_queries=3)


def _oracle(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """Reads the pairs off the ids (skipping NOISE) and puts all mass on each queried key's value."""
    b, t = ids.shape
    logits = torch.zeros(b, t, vocab)
    for r in range(b):
        row = ids[r].tolist()
        seen, i = {}, 1
        while i < t - 1:
            if row[i] == NOISE:
                i += 1
                continue
            if row[i] in seen:
                logits[r, i, seen[row[i]]] = 10.0  # a query: the next token is its value
            else:
                seen[row[i]] = row[i + 1]
            i += 2
    return logits


def test_scorer_oracle_one_constant_chance():
    vocab = 40
    batch = syn.mqar_filler(64, 8, filler=6, vocab_size=vocab, seed=3)
    res = recall.score(lambda ids: _oracle(ids, vocab), batch)
    assert res["answer_accuracy"] == 1.0 and res["token_accuracy"] == 1.0
    n_keys, n_values = syn.mqar_split(vocab)
    guess = SYMBOL0 + n_keys  # a constant model: always the first value symbol

    def const(ids):
        out = torch.zeros(*ids.shape, vocab)
        out[..., guess] = 1.0
        return out

    res = recall.score(const, batch)
    answers = batch.labels[batch.labels != IGNORE_INDEX]
    assert res["answer_accuracy"] == pytest.approx(float((answers == guess).double().mean()))
    assert abs(res["answer_accuracy"] - 1 / n_values) < 0.05  # chance, within sampling noise (512 answers)
