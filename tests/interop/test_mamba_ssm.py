"""mamba_ssm directories (MambaLMHeadModel's config.json + pytorch_model.bin / safetensors)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from transmamba import CausalLM
from transmamba.interop import detect_format
from transmamba.interop.parity import VOCAB, build, rel_err
from transmamba.models.config import ModelConfig


def _write(directory, config, tensors, *, as_bin=True):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if as_bin:
        torch.save(tensors, directory / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_mamba2_checkpoint_matches_hf(tmp_path):
    """An HF Mamba2 model's weights under mamba_ssm's names compute HF's logits when loaded here."""
    pytest.importorskip("transformers")
    hf = build("mamba2", tmp_path / "hf")
    tensors = {
        k.replace("backbone.embeddings.", "backbone.embedding."): v
        for k, v in load_file(str(tmp_path / "hf" / "model.safetensors")).items()
    }
    cfg = {
        "d_model": 32,
        "n_layer": 2,
        "vocab_size": VOCAB,
        "d_intermediate": 0,
        "rms_norm": True,
        "ssm_cfg": {
            "layer": "Mamba2",
            "d_state": 8,
            "headdim": 16,
            "ngroups": 2,
            "chunk_size": 16,
            "bias": True,
            "conv_bias": False,
        },
        "attn_layer_idx": [],
        "attn_cfg": {},
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": False,
    }
    d = _write(tmp_path / "ssm", cfg, tensors)
    assert detect_format(d) == "mamba_ssm"
    ours = CausalLM.from_pretrained(d).eval()
    ids = torch.randint(3, VOCAB, (2, 37))
    with torch.no_grad():
        assert rel_err(hf(ids).logits, ours(ids).logits) <= 1e-4


def test_attention_and_gated_mlp_layers(tmp_path):
    """mamba_ssm's fused MHA in_proj (q|k|v) and GatedMLP fc1 ([y | gate], y * silu(gate)) split correctly:
    a model written by hand in that layout computes the native model's logits."""
    native = CausalLM(
        ModelConfig(
            vocab_size=64,
            d_model=32,
            pattern="M-*-",
            n_heads=4,
            n_kv_heads=2,
            head_dim=8,
            partial_rotary_factor=0.5,
            attn_qkv_bias=True,
            attn_out_bias=True,
            d_ff=128,
            d_state=8,
            headdim=16,
            ngroups=1,
            chunk_size=16,
            tie_embeddings=True,
            norm_eps=1e-5,
        )
    ).eval()
    with torch.no_grad():
        for p in native.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    s = native.state_dict()
    t = {"backbone.embedding.weight": s["embed.weight"], "backbone.norm_f.weight": s["norm.weight"]}
    for i, b in ((0, 0), (1, 2)):
        t[f"backbone.layers.{i}.norm.weight"] = s[f"blocks.{b}.norm.weight"]
        t[f"backbone.layers.{i}.norm2.weight"] = s[f"blocks.{b + 1}.norm.weight"]
        mlp = f"blocks.{b + 1}.mixer."
        t[f"backbone.layers.{i}.mlp.fc1.weight"] = torch.cat(
            [s[mlp + "up_proj.weight"], s[mlp + "gate_proj.weight"]]
        )
        t[f"backbone.layers.{i}.mlp.fc2.weight"] = s[mlp + "down_proj.weight"]
    for k, v in s.items():
        if k.startswith("blocks.0.mixer."):
            t["backbone.layers.0.mixer." + k[len("blocks.0.mixer.") :]] = v
    a = "blocks.2.mixer."
    for leaf in ("weight", "bias"):
        t[f"backbone.layers.1.mixer.in_proj.{leaf}"] = torch.cat([s[f"{a}{p}_proj.{leaf}"] for p in "qkv"])
        t[f"backbone.layers.1.mixer.out_proj.{leaf}"] = s[f"{a}o_proj.{leaf}"]
    cfg = {
        "d_model": 32,
        "n_layer": 2,
        "vocab_size": 60,
        "pad_vocab_size_multiple": 16,
        "d_intermediate": 100,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 16, "chunk_size": 16},
        "attn_layer_idx": [1],
        "attn_cfg": {"num_heads": 4, "num_heads_kv": 2, "head_dim": 8, "rotary_emb_dim": 4, "causal": True},
    }
    d = _write(tmp_path, cfg, t, as_bin=False)
    ours = CausalLM.from_pretrained(d).eval()
    assert ours.config.pattern == "M-*-" and ours.config.vocab_size == 64 and ours.config.ffn_dim == 128
    ids = torch.randint(0, 60, (2, 21))
    with torch.no_grad():
        assert rel_err(native(ids).logits, ours(ids).logits) <= 1e-6


def test_unsupported_fields_are_named(tmp_path):
    base = {"d_model": 32, "n_layer": 1, "vocab_size": 64}
    for extra, field in (
        ({"rms_norm": False}, "rms_norm"),
        ({"ssm_cfg": {"layer": "Mamba3"}}, "ssm_cfg.layer"),
        ({"ssm_cfg": {"layer": "Mamba2", "norm_before_gate": True}}, "ssm_cfg.norm_before_gate"),
        ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "d_conv": 4}}, "attn_cfg.d_conv"),
    ):
        d = tmp_path / field
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**base, **extra}))
        with pytest.raises(ValueError, match=f"field '{field}'"):
            CausalLM.from_pretrained(d)
