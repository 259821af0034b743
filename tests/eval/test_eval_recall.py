"""Recall scorers on hand-made models: an oracle that reads the answer off the ids scores 1.0, a constant
model scores exactly the frequency of its token among the answers (chance in expectation)."""

import math

import pytest
import torch

from transmamba.data import synthetic as syn
from transmamba.data.synthetic import NOISE, QUERY
from transmamba.eval import recall

V = syn.DEFAULT_VOCAB


def _onehot(targets: dict, b: int, t: int) -> torch.Tensor:
    logits = torch.zeros(b, t, V)
    for (r, pos), tok in targets.items():
        if pos < t:
            logits[r, pos, tok] = 10.0
    return logits


def phonebook_oracle(name_len=3, number_len=4):
    """Reads the book in the ids and puts all mass on the queried name's number (a function of ids only)."""

    def fn(ids):
        b, t = ids.shape
        want = {}
        for r in range(b):
            row = ids[r].tolist()
            q = row.index(QUERY)
            book = {}
            for i in range(1, q, name_len + number_len + 2):
                book[tuple(row[i : i + name_len])] = row[i + name_len + 1 : i + name_len + 1 + number_len]
            for qs in [i for i, x in enumerate(row) if x == QUERY]:
                number = book[tuple(row[qs + 1 : qs + 1 + name_len])]
                sep = qs + 1 + name_len  # logits at sep+j predict digit j
                for j, d in enumerate(number):
                    want[(r, sep + j)] = d
        return _onehot(want, b, t)

    return fn


def mqar_oracle(ids):
    b, t = ids.shape
    want = {}
    for r in range(b):
        row = ids[r].tolist()
        seen = {}
        for i in range(1, t - 1, 2):
            if row[i] in seen:
                want[(r, i)] = seen[row[i]]  # a query: predict the stored value
            else:
                seen[row[i]] = row[i + 1]
    return _onehot(want, b, t)


def copy_oracle(ids):
    b, t = ids.shape
    want = {}
    for r in range(b):
        row = ids[r].tolist()
        c = row.index(syn.COPY)
        data = [x for x in row[1:c] if x != NOISE]
        for j, d in enumerate(data):
            want[(r, c + j)] = d
    return _onehot(want, b, t)


def constant(tok):
    def fn(ids):
        out = torch.zeros(*ids.shape, V)
        out[..., tok] = 1.0
        return out

    return fn


def test_phonebook_oracle_scores_one():
    batch = syn.phonebook(8, 12, n_queries=2, seed=0)
    res = recall.score(phonebook_oracle(), batch, batch_size=3)
    assert res["token_accuracy"] == res["exact_match"] == 1.0
    assert res["per_answer"] == [1.0, 1.0]
    assert sum(b["n"] for b in res["by_book_position"]) == 16
    gen = recall.phonebook_generate(phonebook_oracle(), batch)
    assert gen["generate_exact_match"] == 1.0


def test_mqar_and_copy_oracles_score_one():
    assert recall.score(mqar_oracle, syn.mqar(4, 10, seed=1))["accuracy"] == 1.0
    res = recall.score(copy_oracle, syn.selective_copy(4, 6, 30, seed=2))
    assert res["token_accuracy"] == res["exact_match"] == 1.0


def _binomial_ok(emp, p, n):
    return abs(emp - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_phonebook_constant_model_is_chance():
    batch = syn.phonebook(400, 8, seed=3)
    digit = syn.DIGIT0 + 7
    res = recall.score(constant(digit), batch)
    answers = batch.labels[batch.labels != -100]
    assert res["token_accuracy"] == pytest.approx(int((answers == digit).sum()) / answers.numel(), abs=1e-12)
    ch = syn.chance_accuracy("phonebook")
    assert ch["token_accuracy"] == 0.1 and ch["exact_match"] == 1e-4
    assert _binomial_ok(res["token_accuracy"], 0.1, answers.numel())
    # exact match: only numbers "7777" would count
    nums = batch.input_ids[:, batch.answer_positions(0)]
    assert res["exact_match"] == pytest.approx(int((nums == digit).all(1).sum()) / nums.shape[0], abs=1e-7)
    # a wrong-alphabet constant (a symbol) never scores
    assert recall.score(constant(syn.SYMBOL0), batch)["token_accuracy"] == 0.0


def test_mqar_constant_model_is_chance():
    batch = syn.mqar(300, 8, seed=4)
    n_keys, n_values = syn.mqar_split(V)
    tok = syn.SYMBOL0 + n_keys + 2  # a value token
    res = recall.score(constant(tok), batch)
    answers = batch.labels[batch.labels != -100]
    assert res["accuracy"] == pytest.approx(int((answers == tok).sum()) / answers.numel(), abs=1e-12)
    assert syn.chance_accuracy("mqar")["token_accuracy"] == 1 / n_values
    assert _binomial_ok(res["accuracy"], 1 / n_values, answers.numel())
    assert len(res["per_answer"]) == 8


def test_copy_constant_model_is_chance():
    batch = syn.selective_copy(300, 8, 24, seed=5)
    tok = syn.SYMBOL0 + 1
    res = recall.score(constant(tok), batch)
    answers = batch.labels[batch.labels != -100]
    assert res["token_accuracy"] == pytest.approx(int((answers == tok).sum()) / answers.numel(), abs=1e-12)
    assert _binomial_ok(res["token_accuracy"], syn.chance_accuracy("selective-copy")["token_accuracy"],
                        answers.numel())


def test_half_wrong_model_and_shift():
    """An oracle off by one position scores 0: the t-1 -> t shift matters."""
    batch = syn.mqar(4, 6, seed=6)

    def shifted(ids):
        return torch.roll(mqar_oracle(ids), shifts=1, dims=1)

    assert recall.score(shifted, batch)["accuracy"] == 0.0


def test_evaluate_lengths_and_bad_output():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            return phonebook_oracle()(ids) + self.w

    rows = recall.evaluate_lengths(Tiny(), "phonebook", [40, 80], n_rows=4, vocab_size=V, generate=True)
    assert [r["length"] for r in rows] == [40, 80]
    assert all(r["exact_match"] == 1.0 and r["generate_exact_match"] == 1.0 for r in rows)
    with pytest.raises(ValueError, match="logits of shape"):
        recall.score(lambda ids: ids.float(), syn.mqar(1, 2))


def test_generate_path_matches_full_forward_greedy():
    """Greedy decoding through model.generate (caches, TransMamba conversion inside the prompt) gives the
    same tokens as a loop of full forward passes."""
    lm = pytest.importorskip("transmamba.models.lm")
    from transmamba.models.config import ModelConfig

    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=V, d_model=16, pattern="T-*-M-", n_heads=2, d_state=8, headdim=8, ngroups=2,
                      chunk_size=16, transpoints=[20])
    model = lm.CausalLM(cfg).eval()
    prefix = syn.phonebook(3, 4, seed=2).input_ids[:, :30]
    cached = recall.greedy_continue(model, prefix, 5)
    full = recall.greedy_continue(lambda ids: model(ids).logits, prefix, 5)
    assert torch.equal(cached, full)
