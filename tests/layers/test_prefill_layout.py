"""Prefill attention reaches SDPA in layouts the fused kernels take.

Flash, memory-efficient and cuDNN attention all refuse a query / key / value whose last dimension is not
contiguous (stride(-1) != 1), and flash refuses any explicit mask; PyTorch then runs the math kernel, which
materialises the (t x t) score matrix. The CPU tests spy on `F.scaled_dot_product_attention` during the
prefill `generate` runs (a fresh cache: all rows at position 0) and check both. The GPU test runs the same
prefills with the math kernel disallowed, so a fallback is an error, and compares with an fp32 reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transmamba.inference.generate import prefill
from transmamba.models.lm import CausalLM


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Record (q, k, v strides' last entries, attn_mask is None, is_causal) of every SDPA call."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        mask = kwargs.get("attn_mask", args[0] if args else None)
        calls.append({"strides": (q.stride(-1), k.stride(-1), v.stride(-1)), "mask": mask is not None,
                      "causal": bool(kwargs.get("is_causal", False)), "tq": q.shape[-2]})
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


# d_state 64 makes the attention path's value width (h/g)·p = 4·16 equal to its q/k width, so no zero
# padding (which copies into a fresh contiguous tensor) hides the layout SDPA is handed.
CASES = {
    "transmamba": dict(preset="transmamba-tiny", d_state=64, transpoints=[0, 8, 64, 64]),
    "transmamba-converted": dict(preset="transmamba-tiny", d_state=64, transpoints=[64, 64, 64, 64],
                                 tm_attn_rope=True, tm_attn_norm=False, tm_attn_d_skip=False,
                                 tm_conv_activation="none"),
    "transformer": dict(preset="transformer-tiny"),
    "transformer-partial-rope": dict(preset="transformer-tiny", partial_rotary_factor=0.5),
}


def _model(case: dict) -> CausalLM:
    kw = dict(case)
    return CausalLM.from_preset(kw.pop("preset"), **kw).eval()


@pytest.mark.parametrize("name", list(CASES))
def test_prefill_hands_sdpa_contiguous_last_dims_and_no_mask(name, sdpa_calls):
    model = _model(CASES[name])
    with torch.no_grad():
        prefill(model, [list(range(1, 25)), list(range(30, 54))], 40)  # one group of two 24-token rows
    prefill_calls = [c for c in sdpa_calls if c["tq"] > 1]
    assert prefill_calls, "no SDPA call during the prefill"
    for c in prefill_calls:
        assert c["strides"] == (1, 1, 1), f"{name}: SDPA got last-dim strides {c['strides']}"
        assert not c["mask"] and c["causal"], f"{name}: fresh-cache prefill used a mask: {c}"


@pytest.mark.parametrize("name", ["transmamba", "transformer"])
def test_prefill_fast_path_matches_generate_reference(name):
    """The causal no-mask prefill (fresh cache) gives the logits of a plain forward without a cache
    (same fp32 math, different kernels: 1e-5)."""
    model = _model(CASES[name])
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    with torch.no_grad():
        cache = model.init_cache(2, 40)
        with_cache = model(ids, cache=cache).logits
        plain = model(ids).logits
    torch.testing.assert_close(with_cache, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["transmamba-400m", "transformer-400m"])
def test_prefill_runs_without_math_fallback_on_cuda(name):
    """bf16 prefill of 400m-shaped layers (2 blocks, real widths: 16 groups, d_state 128, value width 192)
    with only the fused SDPA kernels allowed (math fallback = RuntimeError), against the fp32 forward.
    Tolerance: bf16 keeps 8 mantissa bits (relative rounding 2^-9 per op); two blocks of in_proj/conv/
    attention/out_proj compound a few of those, so 3e-2 on logits of unit scale leaves ~4x margin."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pattern = "T-T-" if name.startswith("transmamba") else "*-*-"
    kw = dict(pattern=pattern, transpoints=[512, 1024]) if pattern[0] == "T" else dict(pattern=pattern)
    torch.manual_seed(0)
    model = CausalLM.from_preset(name, vocab_size=1024, **kw).cuda().eval()
    ids = torch.randint(0, 1024, (2, 768), device="cuda")
    with torch.no_grad():
        ref = model(ids).logits.float()  # fp32, any kernel
        model = model.to(torch.bfloat16)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                          SDPBackend.CUDNN_ATTENTION]):
            cache = model.init_cache(2, 800)
            out = model(ids, cache=cache).logits.float()
            plain = model(ids).logits.float()
    scale = ref.abs().max()
    assert (out - ref).abs().max() <= 3e-2 * scale
    assert (plain - ref).abs().max() <= 3e-2 * scale
