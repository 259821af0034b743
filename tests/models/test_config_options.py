"""The architecture options added for loaded checkpoints: each against a plain reference, decoding
(eager and through `StaticDecoder`) against the full forward, and the presets' defaults."""

import math

import pytest
import torch
import torch.nn.functional as F

from transmamba import CausalLM
from transmamba.inference.generate import prefill
from transmamba.inference.static_decode import StaticDecoder
from transmamba.layers import Attention, MoE
from transmamba.models.config import ModelConfig
from transmamba.models.presets import get_preset, list_presets

OPTIONS = dict(
    partial_rotary_factor=0.5,
    attn_qkv_bias=True,
    attn_out_bias=False,
    mlp_bias=True,
    ssm_bias=True,
    ssm_conv_bias=False,
    time_step_limit=[0.01, 0.05],
    m1_inner_layernorms=True,
    moe_renormalize=False,
)
SMALL = dict(
    vocab_size=53,
    d_model=32,
    n_heads=4,
    n_kv_heads=2,
    d_ff=48,
    d_state=8,
    headdim=8,
    ngroups=2,
    chunk_size=4,
    m1_d_state=4,
    n_experts=4,
    top_k=2,
    max_seq_len=64,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(**kw):
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(**{"pattern": "M-*-SE", **SMALL, **OPTIONS, **kw})).eval()
    with torch.no_grad():  # no parameter at an init value (zero biases, unit norms)
        for p in model.parameters():
            p.add_(torch.rand_like(p) * 0.1)
    return model


def test_partial_rotary_rotates_only_the_first_channels():
    torch.manual_seed(0)
    attn = Attention(16, 2, head_dim=8, rope_dim=4)
    x = torch.randn(1, 5, 2, 8)
    pos = torch.arange(5)
    out = attn.rotate(x, pos)
    assert torch.equal(out[..., 4:], x[..., 4:])
    # a 4-channel RoPE: pairs (i, i + 2), angle pos * base^(-2i/4)
    inv = 10000.0 ** (-torch.arange(2) * 2.0 / 4)
    ang = pos[:, None].float() * inv  # (5, 2)
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = x[..., :2], x[..., 2:4]
    assert torch.allclose(out[..., :4], torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1), atol=1e-6)


def test_moe_without_renormalisation_uses_the_raw_probabilities():
    torch.manual_seed(0)
    moe = MoE(8, 16, n_experts=4, top_k=2, renormalize=False)
    x = torch.randn(5, 8)
    _, probs, top_w, top_i = moe.route(x)
    assert torch.allclose(top_w, probs.gather(-1, top_i)) and bool((top_w.sum(-1) < 1).all())
    ref = sum(
        top_w[:, j : j + 1] * torch.stack([moe.experts[int(e)](x[n]) for n, e in enumerate(top_i[:, j])])
        for j in range(2)
    )
    assert torch.allclose(moe(x), ref, atol=1e-6)


def test_time_step_limit_clamps_dt():
    model = _model()
    layer = model.mixer(0)
    dt = torch.randn(3, layer.nheads) * 4
    eff, bias, softplus = layer.dt_args(dt)
    assert bias is None and softplus is False
    ref = F.softplus(dt + layer.dt_bias).clamp(0.01, 0.05)
    assert torch.allclose(eff, ref) and eff.min() >= 0.01 and eff.max() <= 0.05


def test_options_build_the_parameters_they_name():
    names = dict(_model().named_parameters())
    assert "blocks.0.mixer.in_proj.bias" in names and "blocks.0.mixer.conv1d.bias" not in names
    assert "blocks.2.mixer.q_proj.bias" in names and "blocks.2.mixer.o_proj.bias" not in names
    assert "blocks.3.mixer.up_proj.bias" in names and "blocks.4.mixer.dt_layernorm.weight" in names


def test_decoding_matches_the_forward_with_every_option():
    model = _model()
    ids = torch.randint(0, 53, (2, 13))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.init_cache(2, 13)
        model(ids[:, :6], cache=cache)
        steps = [model.step(ids[:, t], cache) for t in range(6, 13)]
    err = (torch.stack(steps, 1) - full[:, 6:]).abs().max() / full.abs().max()
    assert err <= 1e-5


def test_decoder_matches_eager_step_with_every_option():
    """StaticDecoder runs the same step as the eager `model.step`: identical logits."""
    model = _model(pattern="M-*-M")  # StaticDecoder covers token mixers that graphs can capture
    prompts = [[1, 2, 3, 4], [5, 6]]
    ref_cache, _, _ = prefill(model, prompts, 16)
    cache, _, _ = prefill(model, prompts, 16)
    dec = StaticDecoder(model, cache)
    with torch.no_grad():
        for t in range(8):
            ids = torch.tensor([7 + t, 9 + t])
            assert torch.equal(dec.step(ids), model.step(ids, ref_cache))


def test_defaults_are_the_previous_architecture():
    cfg = ModelConfig()
    assert (
        cfg.partial_rotary_factor,
        cfg.attn_qkv_bias,
        cfg.attn_out_bias,
        cfg.mlp_bias,
        cfg.ssm_bias,
        cfg.ssm_conv_bias,
        cfg.time_step_limit,
        cfg.m1_inner_layernorms,
        cfg.moe_renormalize,
        cfg.moe_router,
    ) == (1.0, False, False, False, False, True, None, False, True, "softmax")
    for name in list_presets():
        c = get_preset(name)
        jamba = name.startswith("jamba-")
        assert c.m1_inner_layernorms is jamba and c.moe_renormalize is not jamba, name
        assert c.rope_dim == c.attn_head_dim and c.time_step_limit is None and c.ssm_conv_bias, name
        assert c.moe_router == "softmax" and not (c.ssm_bias or c.mlp_bias or c.attn_qkv_bias), name


def test_jamba_preset_has_the_inner_norms():
    model = CausalLM.from_preset("jamba-tiny")
    assert model.mixer(0).inner_layernorms and not model.mixer(3).renormalize
    assert math.isclose(model.mixer(0).dt_layernorm.eps, model.config.norm_eps)


def test_option_errors_name_the_field():
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        ModelConfig(pattern="*-", partial_rotary_factor=0.0)
    with pytest.raises(ValueError, match="time_step_limit"):
        ModelConfig(pattern="M-", time_step_limit=[0.5, 0.1])
    with pytest.raises(ValueError, match="TransMamba"):
        ModelConfig(pattern="T-", time_step_limit=[0.0, 1.0])


@pytest.mark.gpu
def test_options_on_cuda_match_the_cpu():
    """The CUDA paths (Triton SSD with a pre-clamped dt, conv without bias, partial RoPE in the Triton rope
    and the step captured in CUDA graphs) compute what the CPU computes, fp32."""
    cpu = _model(pattern="M-*-M")
    gpu = _model(pattern="M-*-M").cuda()
    ids = torch.randint(0, 53, (2, 45))
    with torch.no_grad():
        ref = cpu(ids).logits
        got = gpu(ids.cuda()).logits.cpu()
    assert (got - ref).abs().max() / ref.abs().max() <= 1e-4
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    eager = cpu.generate(prompts, max_new_tokens=12, do_sample=False)
    assert gpu.generate(prompts, max_new_tokens=12, do_sample=False, cuda_graph="on") == eager
