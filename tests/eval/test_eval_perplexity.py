"""Perplexity: exact on a model whose next-token distribution is known."""

import math

import torch

from transmamba.eval.perplexity import perplexity


def test_uniform_model_has_vocab_perplexity():
    v = 37
    ids = torch.randint(0, v, (1000,))
    res = perplexity(lambda x: torch.zeros(*x.shape, v), ids, seq_len=50, batch_size=7)
    assert math.isclose(res["perplexity"], v, rel_tol=1e-5)
    assert res["windows"] == 20 and res["tokens"] == 20 * 49


def test_perfect_model_has_perplexity_one():
    ids = torch.arange(200) % 11  # next token = (x + 1) % 11

    def fn(x):
        return 50.0 * torch.nn.functional.one_hot((x + 1) % 11, 11).float()

    res = perplexity(fn, ids, seq_len=20, max_windows=3)
    assert res["windows"] == 3 and res["loss"] < 1e-6
