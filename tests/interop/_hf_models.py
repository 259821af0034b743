"""Tiny random HF transformers models for the parity tests (built in the test: nothing downloads).

Every parameter is redrawn (matrices ~ N(0, 0.2²), vectors ~ U(0.5, 1.5): norm weights, A_log, D, dt biases,
conv biases, router correction biases), so no parameter sits at an init value that could hide a mapping
error (a norm weight of ones, a zero bias).
"""

from __future__ import annotations

import torch

VOCAB = 96
CHUNK = 16  # SSD chunk length of the Mamba-2 models; the tests use lengths that are not multiples of it


def hf_configs() -> dict:
    """model_type -> a tiny transformers config (two or more layer kinds where the architecture has them)."""
    import transformers as T

    common = dict(vocab_size=VOCAB, hidden_size=32, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return {
        "mamba2": T.Mamba2Config(
            num_hidden_layers=2,
            num_heads=4,
            head_dim=16,
            state_size=8,
            n_groups=2,
            chunk_size=CHUNK,
            use_bias=True,
            use_conv_bias=False,
            **common,
        ),
        "mamba": T.MambaConfig(
            num_hidden_layers=2, state_size=8, expand=2, time_step_rank=4, use_bias=True, **common
        ),
        "nemotron_h": T.NemotronHConfig(
            layers_block_type=["linear_attention", "mlp", "full_attention", "mlp", "linear_attention"],
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=48,
            mamba_num_heads=4,
            mamba_head_dim=16,
            ssm_state_size=8,
            n_groups=2,
            chunk_size=CHUNK,
            mlp_hidden_act="relu2",
            **common,
        ),
        "jamba": T.JambaConfig(
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            num_experts=4,
            num_experts_per_tok=2,
            attn_layer_period=4,
            attn_layer_offset=2,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=8,
            mamba_dt_rank=4,
            **common,
        ),
        "bamba": T.BambaConfig(
            num_hidden_layers=3,
            attn_layer_indices=[1],
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            mamba_n_heads=4,
            mamba_d_state=8,
            mamba_n_groups=2,
            mamba_chunk_size=CHUNK,
            attention_bias=True,
            mlp_bias=True,
            **common,
        ),
        "llama": T.LlamaConfig(
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, **common
        ),
        "qwen2": T.Qwen2Config(
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, **common
        ),
    }


@torch.no_grad()
def redraw(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        else:
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model


def build(model_type: str, directory, *, seed: int = 0, **overrides):
    """A random HF model of `model_type`, saved to `directory`; returns the model (eval mode, fp32)."""
    import transformers as T

    config = hf_configs()[model_type]
    for k, v in overrides.items():
        setattr(config, k, v)
    torch.manual_seed(seed)
    model = redraw(T.AutoModelForCausalLM.from_config(config), seed).eval()
    model.save_pretrained(directory)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (the error relative to the logits' scale)."""
    return float((a.double() - b.double()).abs().max() / a.double().abs().max())
