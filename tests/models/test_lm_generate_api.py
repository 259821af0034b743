"""`CausalLM.generate`'s Hugging Face-style surface: visible signature, do_sample, eos, attention_mask."""

import inspect

import pytest
import torch

from transmamba import CausalLM


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend
    torch.manual_seed(0)
    yield CausalLM.from_preset("mamba2-hybrid-8b-tiny").eval()
    torch.set_num_threads(threads)


def test_signature_is_explicit():
    params = inspect.signature(CausalLM.generate).parameters
    for name in (
        "input_ids",
        "max_new_tokens",
        "attention_mask",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
        "eos_token_id",
        "pad_token_id",
        "seed",
        "streamer",
    ):
        assert name in params, name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_do_sample_false_is_greedy(model):
    ids = torch.randint(0, 512, (2, 9))
    a = model.generate(ids, max_new_tokens=6, do_sample=False)
    b = model.generate(ids, max_new_tokens=6, greedy=True)
    logits = model(ids).logits[:, -1]
    assert torch.equal(a, b) and torch.equal(a[:, 9], logits.argmax(-1))


def test_eos_token_id_stops_and_pads(model):
    ids = torch.randint(0, 512, (1, 5))
    free = model.generate(ids, max_new_tokens=8, do_sample=False)
    eos = int(free[0, 7])  # the third generated token
    out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=[eos], pad_token_id=3)
    first = int((out[0, 5:] == eos).nonzero()[0])
    assert out.shape[1] == 5 + first + 1 and torch.equal(out[0, : 5 + first + 1], free[0, : 5 + first + 1])


@pytest.mark.parametrize("side", ["left", "right"])
def test_attention_mask_padding(model, side):
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randint(1, 512, (8,), generator=gen), torch.randint(1, 512, (5,), generator=gen)
    ids = torch.zeros(2, 8, dtype=torch.long)
    mask = torch.zeros(2, 8, dtype=torch.long)
    ids[0], mask[0] = a, 1
    sl = slice(3, 8) if side == "left" else slice(0, 5)
    ids[1, sl], mask[1, sl] = b, 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert out.shape == (2, 13) and torch.equal(out[:, :8], ids)
    alone = model.generate(b[None], max_new_tokens=5, do_sample=False)
    assert torch.equal(out[1, 8:], alone[0, 5:])


def test_attention_mask_errors(model):
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model.generate(ids, attention_mask=torch.ones(2, 3), max_new_tokens=2)
    with pytest.raises(ValueError, match="row 1 of attention_mask is all zeros"):
        model.generate(ids, attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), max_new_tokens=2)
