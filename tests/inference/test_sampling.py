"""Sampling filters: temperature, top-k, top-p, greedy, seeded generators."""

import pytest
import torch

from transmamba.inference.sampling import (
    filter_logits,
    make_generator,
    sample_next,
    top_k_filter,
    top_p_filter,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one intra-op thread is far faster than two fighting over a shared 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0], [0.0, -1.0, 2.0, 1.0]])
    out = top_k_filter(logits, 2)
    assert torch.isfinite(out).sum(-1).tolist() == [2, 2]
    assert torch.isfinite(out[0]).tolist() == [False, True, False, True]
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_smallest_set_reaching_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).sum() == 1  # the top token always stays
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_p_filter(shuffled, 0.8)).tolist() == [[False, True, False, True]]


def test_temperature_and_greedy():
    logits = torch.randn(3, 11)
    assert torch.allclose(filter_logits(logits, temperature=2.0), logits / 2)
    assert torch.equal(sample_next(logits, greedy=True), logits.argmax(-1))
    # a very low temperature is greedy in practice
    assert torch.equal(sample_next(logits, temperature=1e-4, generator=make_generator(0)), logits.argmax(-1))


def test_seeded_sampling_is_reproducible_and_respects_filters():
    logits = torch.randn(4, 50)
    g = make_generator(7)
    a = [sample_next(logits, top_k=5, generator=g) for _ in range(20)]
    g = make_generator(7)
    b = [sample_next(logits, top_k=5, generator=g) for _ in range(20)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    allowed = torch.topk(logits, 5, dim=-1).indices
    for tok in b:
        assert all(int(t) in allowed[r].tolist() for r, t in enumerate(tok))


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_args(kw):
    with pytest.raises(ValueError):
        filter_logits(torch.randn(1, 4), **kw)
