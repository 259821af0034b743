"""Parity with HF transformers on tiny random models (needs the optional `transformers` package).

    python -m transmamba.interop.parity            prints the parity table (docs/interop.md) for every
                                                   supported model_type, built here: nothing downloads

`build(model_type, dir)` makes a tiny random HF model and saves it; `parity_row(model_type)` loads it here
and compares: fp32 logits (max relative error at a length that is not a multiple of the SSD chunk), greedy
generation of 32 tokens (one prompt, and a left-padded batch of two prompts of different lengths), and
the round trip back to HF. The tests in tests/interop use the same builders.

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
            layers_block_type=["linear_attention", "mlp", "full_attention", "moe", "linear_attention"],
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
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            moe_shared_expert_intermediate_size=24,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=1.5,
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
        "mistral": T.MistralConfig(
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
            sliding_window=None, **common
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
    for name, b in model.named_buffers():  # NemotronH's router bias is a buffer (it shifts the choice)
        if name.endswith("e_score_correction_bias"):
            b.copy_(torch.rand(b.shape, generator=gen) * 0.5)
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


def _greedy_pair(hf, ours, ids: torch.Tensor, mask: torch.Tensor | None) -> bool:
    kw = dict(max_new_tokens=32, do_sample=False, eos_token_id=1, pad_token_id=0)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask if mask is not None else torch.ones_like(ids), **kw)
    return bool(torch.equal(ref, ours.generate(ids, attention_mask=mask, **kw)))


def left_padded_batch(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 13 and 6 tokens, the short one left-padded with id 0: (ids (2, 13), mask (2, 13))."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(2, 13, dtype=torch.long)
    mask = torch.zeros(2, 13, dtype=torch.long)
    ids[0], mask[0] = torch.randint(3, VOCAB, (13,), generator=gen), 1
    ids[1, 7:], mask[1, 7:] = torch.randint(3, VOCAB, (6,), generator=gen), 1
    return ids, mask


def parity_row(model_type: str, directory) -> dict:
    """Build, load here, compare (see the module docstring); returns the table row as a dict."""
    from pathlib import Path

    import transformers

    from transmamba.models.lm import CausalLM

    directory = Path(directory)
    hf = build(model_type, directory / "hf")
    ours = CausalLM.from_pretrained(directory / "hf").eval()
    ids = torch.randint(3, VOCAB, (2, 2 * CHUNK + 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        err = rel_err(ref, ours(ids).logits)
    single = torch.randint(3, VOCAB, (1, 11), generator=torch.Generator().manual_seed(2))
    ours.save_pretrained(directory / "back", format="hf", model_type=model_type)
    back = transformers.AutoModelForCausalLM.from_pretrained(directory / "back").eval()
    with torch.no_grad():
        round_trip = rel_err(ref, back(ids).logits)
    return dict(model_type=model_type, pattern=ours.config.pattern, max_rel_err=err,
                greedy_one=_greedy_pair(hf, ours, single, None),
                greedy_padded=_greedy_pair(hf, ours, *left_padded_batch()),
                round_trip_rel_err=round_trip, round_trip_type=back.config.model_type)


def main() -> None:
    import tempfile

    import transformers

    from transmamba.interop.hf import SUPPORTED

    torch.set_num_threads(1)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, fp32 CPU; logits of 2 x "
          f"{2 * CHUNK + 5} tokens (SSD chunk {CHUNK})\n")
    print("| model_type | pattern | max rel err (logits) | greedy 32 tok identical | left-padded batch of 2 "
          "identical | round trip to HF (rel err) |")
    print("|---|---|---|---|---|---|")
    for mt in SUPPORTED:
        with tempfile.TemporaryDirectory() as d:
            r = parity_row(mt, d)
        yes = {True: "yes", False: "NO"}
        print(f"| {mt} | `{r['pattern']}` | {r['max_rel_err']:.1e} | {yes[r['greedy_one']]} | "
              f"{yes[r['greedy_padded']]} | {r['round_trip_type']}, {r['round_trip_rel_err']:.1e} |")


if __name__ == "__main__":
    main()
