"""A Transformer (`*` attention + `-` MLP / `E` MoE layers) turned into TransMamba (`T`) layers.

TransMamba shares one set of matrices between its two paths (Q = C, K = B, V = x), so a trained
attention layer's weights are a TransMamba layer's attention path. Per attention layer with Hq query heads,
Hkv key/value heads and head size d (GQA when Hkv < Hq):

    TransMamba shape     ngroups G = Hq, d_state N = d, value heads H = Hq, headdim = d,
                         d_inner = Hq·d (expand = d_inner / d_model, an integer)
    in_proj rows         C (query of group g)  <- q_proj rows of head g
                         B (key of group g)    <- k_proj rows of kv head g // (Hq / Hkv)   (GQA: repeated)
                         x (value head h)      <- v_proj rows of kv head h // (Hq / Hkv)   (GQA: repeated)
                         z, dt                 <- freshly initialised (the SSM path only)
    out_proj             <- o_proj
    conv1d               identity: weight 1 on the current token's tap, 0 elsewhere, bias 0
    A_log, dt_bias, D    Mamba-2's initialisation (the SSM path only; D is off on the attention path)

and the converted model's config sets the attention-path options that make it compute the teacher:
`tm_conv_activation="none"` (the paper's layer has SiLU after the conv; attention has nothing there),
`tm_attn_rope=True` with the teacher's RoPE base (RoPE on Q = C, K = B only; the SSM keeps unrotated B, C),
`tm_attn_norm=False` (the paper's layer norms the attention output; attention does not),
`tm_attn_d_skip=False`. Scale 1/√N = 1/√d as in attention. Embeddings, block norms, MLPs / MoE, the final
norm and the LM head are copied. With every TransPoint >= the context the converted model then computes the
teacher's function up to floating-point rounding (tested); lowering TransPoints hands positions to an SSM
that starts from the attention weights (distillation trains it).

What does not carry over: attention biases (Qwen2's q/k/v biases) have no place in Mamba-2's in_proj
without a bias on every row, and sliding-window attention (Mistral) is treated as full attention.
"""

from __future__ import annotations

import torch

from transmamba.errors import UsageError
from transmamba.models.config import ModelConfig


class ConversionError(UsageError, ValueError):
    """The model cannot be converted (says which layer or field and why)."""


def transmamba_config(teacher: ModelConfig, transpoints: list[int] | None = None) -> ModelConfig:
    """The TransMamba config a Transformer config converts to. `transpoints` None: every P = max_seq_len
    (each layer starts as pure attention)."""
    kinds = teacher.layer_kinds
    if "attention" not in kinds:
        raise ConversionError(f"the teacher's pattern {teacher.pattern!r} has no attention ('*') layer")
    bad = sorted({k for k in kinds if k not in ("attention", "mlp", "moe")})
    if bad:
        raise ConversionError(f"only '*' attention, '-' MLP and 'E' MoE layers convert; pattern "
                              f"{teacher.pattern!r} has {bad}")
    hq, d = teacher.n_heads, teacher.attn_head_dim
    d_inner = hq * d
    if d_inner % teacher.d_model:
        raise ConversionError(f"n_heads * head_dim = {d_inner} must be a multiple of d_model="
                              f"{teacher.d_model} (TransMamba's d_inner = expand * d_model)")
    if teacher.rope and d % 2:
        raise ConversionError(f"head_dim={d} must be even for RoPE")
    n_t = sum(k == "attention" for k in kinds)
    points = list(transpoints) if transpoints is not None else [teacher.max_seq_len] * n_t
    return teacher.replace(
        pattern=teacher.pattern.replace("*", "T"), d_state=d, headdim=d, expand=d_inner // teacher.d_model,
        ngroups=hq, transpoints=points, schedule_train_len=None, tm_attn_rope=teacher.rope,
        tm_attn_norm=False, tm_attn_d_skip=False, tm_conv_activation="none",
    )


def _expand_heads(w: torch.Tensor, n_from: int, n_to: int) -> torch.Tensor:
    """(n_from·d, D) rows per head -> (n_to·d, D): head j of the result is head j // (n_to / n_from)."""
    d = w.shape[0] // n_from
    return w.reshape(n_from, d, -1).repeat_interleave(n_to // n_from, dim=0).reshape(n_to * d, -1)


@torch.no_grad()
def convert_to_transmamba(teacher, transpoints: list[int] | None = None, *, seed: int = 0):
    """A `CausalLM` Transformer -> a new `CausalLM` of TransMamba layers (see the module docstring).

    The teacher is left unchanged. `seed` draws the SSM-only parameters (z rows, dt, A)."""
    from transmamba.models.lm import CausalLM

    tcfg = teacher.config
    scfg = transmamba_config(tcfg, transpoints)
    torch.manual_seed(seed)
    student = CausalLM(scfg).to(device=teacher.device, dtype=teacher.dtype)
    student.embed.weight.copy_(teacher.embed.weight)
    student.norm.weight.copy_(teacher.norm.weight)
    if not scfg.tie_embeddings:
        student.lm_head.weight.copy_(teacher.lm_head.weight)
    hq, hkv, d = tcfg.n_heads, tcfg.kv_heads, tcfg.attn_head_dim
    for i, (tb, sb) in enumerate(zip(teacher.blocks, student.blocks)):
        sb.norm.weight.copy_(tb.norm.weight)
        if teacher.kinds[i] != "attention":
            sb.mixer.load_state_dict(tb.mixer.state_dict())
            continue
        att, tm = tb.mixer, sb.mixer
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if getattr(att, name).bias is not None:
                raise ConversionError(f"layer {i}: attention {name} has a bias, which TransMamba's in_proj "
                                      "cannot hold")
        d_inner = hq * d
        w = tm.in_proj.weight  # rows [z | x | B | C | dt]
        gn = hq * d
        x0, b0, c0, dt0 = d_inner, 2 * d_inner, 2 * d_inner + gn, 2 * d_inner + 2 * gn
        w[x0:b0] = _expand_heads(att.v_proj.weight, hkv, hq)
        w[b0:c0] = _expand_heads(att.k_proj.weight, hkv, hq)
        w[c0:dt0] = att.q_proj.weight
        tm.out_proj.weight.copy_(att.o_proj.weight)
        tm.conv1d.weight.zero_()
        tm.conv1d.weight[:, 0, -1] = 1.0  # the current token's tap: conv = identity
        if tm.conv1d.bias is not None:
            tm.conv1d.bias.zero_()
        # z and dt rows keep CausalLM's init (std init_std); A_log, dt_bias, D Mamba-2's
    return student


def kv_bytes_per_token(config: ModelConfig, dtype_bytes: int = 2) -> dict[str, int]:
    """Decode-cache bytes per cached position of one layer: a TransMamba layer before its TransPoint keeps
    (B, x, dt) = G·N + d_inner + H numbers per token; an attention layer keeps K and V."""
    return {
        "transmamba": dtype_bytes * (config.ngroups * config.d_state + config.d_inner + config.ssm_heads),
        "attention": dtype_bytes * 2 * config.kv_heads * config.attn_head_dim,
    }
