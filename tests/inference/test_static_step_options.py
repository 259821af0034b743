"""The static decode step honours the options of Transformers converted to TransMamba (ModelConfig's
tm_attn_rope, tm_attn_norm, tm_attn_d_skip, tm_conv_activation), as `TransMamba.step` does."""

from __future__ import annotations

import itertools

import pytest
import torch

from transmamba.inference.generate import generate, prefill
from transmamba.inference.static_decode import StaticDecoder
from transmamba.inference.static_step import layer_modes, transmamba_step
from transmamba.models.config import ModelConfig
from transmamba.models.lm import CausalLM

SMALL = dict(vocab_size=53, d_model=32, n_heads=4, d_ff=48, d_state=8, headdim=8, ngroups=2, chunk_size=4,
             max_seq_len=64)
OPTIONS = [dict(tm_attn_rope=r, tm_attn_norm=n, tm_attn_d_skip=d, tm_conv_activation=a)
           for r, n, d, a in itertools.product([True, False], [True, False], [True, False], ["silu", "none"])
           if (r, n, d, a) != (False, True, True, "silu")]  # the defaults are covered by test_static_decode


def _model(options: dict, seed: int) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(ModelConfig(pattern="T-*T", transpoints=[5, 8], **SMALL, **options)).eval()


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k[3:]}={v}" for k, v in o.items()))
def test_static_step_equals_layer_step_with_converted_options(options):
    """Rows at different positions cross both TransPoints (attn, mixed and ssm modes); every step's logits
    agree with `CausalLM.step` (the layers' own step()) to fp32 rounding (1e-5 on logits of size ~1)."""
    model = _model(options, seed=len(str(options)))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 53, (n,), generator=gen).tolist() for n in (2, 4, 1, 6)]
    steps = 10
    ref_cache, _, _ = prefill(model, prompts, 6 + steps)
    cache, _, _ = prefill(model, prompts, 6 + steps)
    dec = StaticDecoder(model, cache)
    seen = set()
    with torch.no_grad():
        for _ in range(steps):
            modes = layer_modes(model, dec.positions)
            seen.update(m for m, k in zip(modes, model.kinds) if k == "transmamba")
            ids = torch.randint(0, 53, (len(prompts),), generator=gen)
            ref = model.step(ids, ref_cache)
            out = dec.step(ids)
            assert (out - ref).abs().max().item() <= 1e-5
    assert seen == {"attn", "mixed", "ssm"}


@pytest.mark.parametrize("mode", ["attn", "ssm", "mixed"])
def test_transmamba_step_equals_layer_step(mode):
    """One layer, every converted option on, one step in each mode against `TransMamba.step`."""
    model = _model(dict(tm_attn_rope=True, tm_attn_norm=False, tm_attn_d_skip=False,
                        tm_conv_activation="none"), seed=3)
    layer = model.mixer(0)  # P = 5
    lengths = {"attn": [1, 3], "ssm": [6, 7], "mixed": [2, 6]}[mode]
    hidden = torch.randn(2, 8, 32)
    states = []
    for _ in range(2):
        s = layer.init_state(2, max_len=16)
        with torch.no_grad():
            for r, n in enumerate(lengths):  # prefill each row to its own length
                sub = layer.init_state(1, max_len=16)
                layer(hidden[r:r + 1, :n], state=sub)
                s = sub if r == 0 else type(s).stack([s, sub])
        states.append(s)
    ref_state, state = states
    if mode != "attn":  # the static step expects rows at or past P converted beforehand
        due = [r for r, n in enumerate(lengths) if n >= 5 and not bool(state.converted[r])]
        if due:
            layer._convert_rows(state, torch.tensor(due))
    x = torch.randn(2, 32)
    with torch.no_grad():
        ref = layer.step(x, ref_state)
        out = transmamba_step(layer, x, state, mode)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_generate_static_path_equals_eager_for_converted_model():
    """generate() through the static step (what CUDA decoding runs) equals the eager model.step loop."""
    model = _model(dict(tm_attn_rope=True, tm_attn_norm=False, tm_attn_d_skip=False,
                        tm_conv_activation="none"), seed=4)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    eager = generate(model, prompts, 12, greedy=True, cuda_graph="off")
    cache, logits, order = prefill(model, prompts, 6 + 12)
    dec = StaticDecoder(model, cache)
    toks = logits.argmax(-1)
    out = [[t] for t in toks.tolist()]
    with torch.no_grad():
        for _ in range(11):
            toks = dec.step(toks).argmax(-1)
            for r, t in enumerate(toks.tolist()):
                out[r].append(t)
    static = [prompts[i] + out[r] for r, i in enumerate(order)]
    static = [static[order.index(i)] for i in range(len(prompts))]
    assert static == eager
