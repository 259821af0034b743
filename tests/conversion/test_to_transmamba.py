"""A Transformer converted to TransMamba computes the Transformer while every TransPoint is past the context.

Tolerance: the converted layer runs the same matmuls on re-ordered weights (rows of in_proj instead of three
projections, grouped SDPA instead of GQA SDPA, the identity conv as a 4-tap sum with zeros): fp32 rounding
of O(10) ops per layer at |logits| ~ 1, so ~1e-6 relative per layer; we allow 1e-4 relative over the whole
model (4 layers), which a single wrong head, a missing RoPE or the SiLU after the conv would exceed by
at least tenfold (checked below: each option off breaks it; a random-init teacher attends nearly
uniformly, so RoPE alone moves the logits by only ~4e-3).
"""

from __future__ import annotations

import pytest
import torch

from transmamba import CausalLM
from transmamba.conversion import ConversionError, convert_to_transmamba
from transmamba.models.presets import get_preset


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _teacher(**kw) -> CausalLM:
    torch.manual_seed(0)
    cfg = get_preset("transformer-tiny", **kw)
    model = CausalLM(cfg).eval()
    with torch.no_grad():  # random, non-trivial norms (the preset inits them to 1)
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("kv_heads", [4, 2])  # MHA and GQA
def test_converted_equals_teacher_at_full_transpoints(kv_heads):
    teacher = _teacher(n_kv_heads=kv_heads)
    student = convert_to_transmamba(teacher).eval()
    assert student.config.pattern == "T-" * 4
    ids = torch.randint(0, teacher.config.vocab_size, (2, 37))
    with torch.no_grad():
        ref, out = teacher(ids).logits, student(ids).logits
    assert _rel(out, ref) < 1e-4
    # packed documents: positions restart per document on both
    seq_idx = torch.tensor([[0] * 20 + [1] * 17, [0] * 37])
    with torch.no_grad():
        assert _rel(student(ids, seq_idx=seq_idx).logits, teacher(ids, seq_idx=seq_idx).logits) < 1e-4


def test_converted_decoding_matches_teacher():
    teacher = _teacher(n_kv_heads=2)
    student = convert_to_transmamba(teacher).eval()
    prompt = torch.randint(0, teacher.config.vocab_size, (1, 9))
    assert torch.equal(_greedy(teacher, prompt), _greedy(student, prompt))


def _greedy(model, prompt):
    import inspect

    if "do_sample" in inspect.signature(model.generate).parameters:
        return model.generate(prompt, max_new_tokens=12, do_sample=False)
    return model.generate(prompt, max_new_tokens=12, greedy=True)


@pytest.mark.parametrize("option", ["tm_attn_rope", "tm_attn_norm", "tm_conv_activation"])
def test_each_attention_path_option_is_needed(option):
    teacher = _teacher()
    student = convert_to_transmamba(teacher).eval()
    flipped = {"tm_attn_rope": False, "tm_attn_norm": True, "tm_conv_activation": "silu"}[option]
    other = CausalLM(student.config.replace(**{option: flipped})).eval()
    other.load_state_dict(student.state_dict())
    ids = torch.randint(0, teacher.config.vocab_size, (2, 37))
    with torch.no_grad():
        assert _rel(other(ids).logits, teacher(ids).logits) > 1e-3  # >= 10x the tolerance


def test_lowered_transpoints_keep_the_memory_converter_exact():
    """With RoPE on the attention path only, outputs at t >= P still equal a pure-SSM pass (P = 0)."""
    teacher = _teacher()
    student = convert_to_transmamba(teacher).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (1, 40))
    layer = student.transmamba_layers()[0]
    h = torch.randn(1, 40, teacher.config.d_model)
    with torch.no_grad():
        layer.transpoint = 0
        full = layer(h)
        layer.transpoint = 16
        mixed = layer(h)
    assert _rel(mixed[:, 16:], full[:, 16:]) < 1e-5
    assert ids.shape == (1, 40)


def test_non_transformer_refused():
    with pytest.raises(ConversionError, match="no attention"):
        convert_to_transmamba(CausalLM(get_preset("mamba2-tiny")))


def test_hf_llama_loads_and_converts(tmp_path):
    transformers = pytest.importorskip("transformers")
    from transmamba.conversion.teacher import load_teacher

    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path / "llama")
    teacher, _ = load_teacher(tmp_path / "llama")
    ids = torch.randint(0, 300, (2, 29))
    with torch.no_grad():
        ref = hf(ids).logits
        assert _rel(teacher(ids).logits, ref) < 1e-4
        student = convert_to_transmamba(teacher).eval()
        assert _rel(student(ids).logits, ref) < 1e-4
