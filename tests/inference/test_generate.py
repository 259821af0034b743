"""generate(): ragged batches equal one-by-one generation, stop tokens, seeds, streaming, ModelCache."""

import pytest
import torch

from transmamba.inference.cache import ModelCache, cache_bytes_per_sequence
from transmamba.inference.generate import generate
from transmamba.models.config import ModelConfig
from transmamba.models.lm import CausalLM


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one intra-op thread is far faster than two fighting over a shared 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


SMALL = dict(vocab_size=53, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, d_state=8, headdim=8, ngroups=2,
             chunk_size=4, m1_d_state=4, n_experts=4, top_k=2, max_seq_len=64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(11)
    return CausalLM(ModelConfig(pattern="T-*-S-TE", transpoints=[3, 6], **SMALL)).eval()


def test_ragged_batch_equals_one_by_one(model):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], [11, 12, 13]]
    batch = generate(model, prompts, 7, greedy=True)
    for p, row in zip(prompts, batch):
        alone = generate(model, [p], 7, greedy=True)[0]
        assert row == alone
        assert row[: len(p)] == p and len(row) == len(p) + 7


def test_tensor_input_and_stop_tokens(model):
    ids = torch.tensor([[1, 2, 3], [7, 8, 9]])
    free = generate(model, ids, 6, greedy=True)
    assert free.shape == (2, 9) and torch.equal(free[:, :3], ids)
    new = free[0, 3:].tolist()
    # the first token row 0 emits that it has not emitted before, after its 1st new token (a random model
    # may repeat itself, and a stop token ends the row at its first occurrence)
    k = next((i for i in range(1, len(new)) if new[i] not in new[:i]), None)
    assert k is not None, "row 0 emits one token six times: pick another seed"
    stop = new[k]
    out = generate(model, ids, 6, greedy=True, stop_tokens=[stop], pad_token_id=0)
    assert out[0, 3 + k] == stop and bool((out[0, 4 + k:] == 0).all())
    lists = generate(model, [[1, 2, 3]], 6, greedy=True, stop_tokens=stop)
    assert lists[0][-1] == stop and len(lists[0]) == 4 + k


def test_seeded_sampling_and_streamer(model):
    a = generate(model, [[1, 2], [3]], 8, temperature=0.9, top_k=10, top_p=0.9, seed=123)
    b = generate(model, [[1, 2], [3]], 8, temperature=0.9, top_k=10, top_p=0.9, seed=123)
    assert a == b
    seen = []
    out = generate(model, [[1, 2], [3, 4, 5]], 5, greedy=True,
                   streamer=lambda tok, active: seen.append((tok.tolist(), active.tolist())))
    assert len(seen) == 5
    assert [s[0][0] for s in seen] == out[0][2:] and [s[0][1] for s in seen] == out[1][3:]


def test_generate_args_checked(model):
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[1], []], 3)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [[1]], 3, temperature=0)
    with pytest.raises(ValueError, match="contradicts"):
        generate(model, [[1]], 3, greedy=True, do_sample=True)
    assert generate(model, [[1, 2]], 0) == [[1, 2]]


@torch.no_grad()
def test_model_cache_stack_and_analytic_bytes():
    torch.manual_seed(2)
    # no attention layer: state sizes do not depend on max_len
    cfg = ModelConfig(pattern="T-M-S-", transpoints=[4], **SMALL)
    model = CausalLM(cfg).eval()
    caches = []
    for n in (2, 9):
        c = model.init_cache(1, 16)
        model(torch.randint(0, cfg.vocab_size, (1, n)), cache=c)
        caches.append(c)
    merged = ModelCache.stack(caches)
    assert merged.batch_size == 2 and merged.seqlen_offset.tolist() == [2, 9]
    assert merged.states[1] is None  # MLP layers keep no state
    # analytic size, once past P (KV dropped): measured payload minus the per-row counters / flags
    measured = caches[1].nbytes()
    analytic = cache_bytes_per_sequence(cfg, 9, torch.float32)
    bookkeeping = sum(t.numel() * t.element_size() for s in caches[1].states if s is not None
                      for t in s.tensors() if t.dtype in (torch.long, torch.bool))
    assert measured - bookkeeping == analytic


def test_on_step_sees_the_cache_after_prefill_and_every_step(model):
    """on_step(cache) after the prefill and after each of the n - 1 steps (the last token is not fed): the
    positions advance by one, the TransMamba layers (P = 3, 6) convert and free their KV caches on the way,
    and the tokens are those generated without an observer."""
    prompts = [[1, 2], [4, 5]]
    seen = []

    def watch(cache):
        tm = [s for s in cache.states if hasattr(s, "converted")]
        seen.append((cache.seqlen_offset.tolist(), [s.kv_B is None for s in tm], cache.nbytes()))

    out = generate(model, prompts, 8, seed=1, on_step=watch)
    assert out == generate(model, prompts, 8, seed=1)
    assert [s[0] for s in seen] == [[p, p] for p in range(2, 10)]
    assert seen[0][1] == [False, False] and seen[-1][1] == [True, True]
    assert seen[-1][2] < seen[0][2]
