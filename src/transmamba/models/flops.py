"""FLOPs of one training token of a `ModelConfig` at sequence length T, split by where they are spent.

Model FLOPs (what the algorithm needs, not what a kernel happens to do): a multiply-add is 2 FLOPs, the
backward is counted as 2 x the forward, so training = 3 x forward. Per token, forward:

    dense      2 x (weights of every matmul: mixers' projections, MLPs, the LM head)   (embedding: a lookup)
    attention  `*` layer: 2 x k(T) x n_heads x (head_dim_qk + head_dim_v),  k(T) = (T + 1) / 2 keys on
               average under the causal mask
               `T` layer with TransPoint P: attention among the first n = min(P, T) positions only, with
               ngroups query/key heads of d_state channels and one value of (nheads / ngroups) x headdim per
               group: 2 x [n (n + 1) / 2] x ngroups x (d_state + d_inner / ngroups) / T
    ssd        Mamba-2's chunked SSD (chunk Q) per token on the SSM path: nheads x (2pn chunk state
               + 2pn state read-out + Q p intra-chunk, causal half) + ngroups x Q n (C·B, causal half);
               a `T` layer runs it on T - n tokens and the converter (2pn per head) on its n prefix tokens

Elementwise work (norms, conv1d, activations, softmax exponentials, optimizer) is not counted. The same
count is used for every model, so MFU = train FLOPs x tokens/s / peak compares like with like.
"""

from __future__ import annotations

from transmamba.models.config import ModelConfig

__all__ = ["forward_flops_per_token", "train_flops_per_token", "dense_params"]


def dense_params(cfg: ModelConfig) -> int:
    """Weights of every matmul per token (mixers' and MLPs' projections + the LM head), no embedding."""
    d = cfg.d_model
    total = cfg.vocab_size * d  # LM head (tied or not, it is a matmul)
    for kind in cfg.layer_kinds:
        if kind in ("mamba2", "transmamba"):
            d_in_proj = 2 * cfg.d_inner + 2 * cfg.ngroups * cfg.d_state + cfg.ssm_heads
            total += d * d_in_proj + cfg.d_inner * d
        elif kind == "attention":
            hd = cfg.attn_head_dim
            total += d * hd * (2 * cfg.n_heads + 2 * cfg.kv_heads)
        elif kind == "mlp":
            total += d * cfg.ffn_dim * (3 if cfg.mlp_act == "swiglu" else 2)
        elif kind == "moe":
            total += cfg.top_k * 3 * d * cfg.expert_dim + d * cfg.n_experts
        else:
            raise ValueError(f"flops: layer kind {kind!r} is not counted")
    return total


def _ssd_per_token(cfg: ModelConfig) -> float:
    h, p, n, g, q = cfg.ssm_heads, cfg.headdim, cfg.d_state, cfg.ngroups, cfg.chunk_size
    return h * (2 * p * n + 2 * p * n + q * p) + g * q * n


def forward_flops_per_token(cfg: ModelConfig, T: int) -> dict[str, float]:
    """{'dense', 'attention', 'ssd', 'total'}: forward FLOPs per token at sequence length T."""
    if T <= 0:
        raise ValueError(f"flops: T must be positive, got {T}")
    attn = ssd = 0.0
    points = iter(cfg.resolved_transpoints())
    for kind in cfg.layer_kinds:
        if kind == "attention":
            attn += 2 * (T + 1) / 2 * cfg.n_heads * 2 * cfg.attn_head_dim
        elif kind == "mamba2":
            ssd += _ssd_per_token(cfg)
        elif kind == "transmamba":
            m = min(next(points), T)
            width = cfg.d_state + cfg.d_inner // cfg.ngroups
            attn += 2 * (m * (m + 1) / 2) * cfg.ngroups * width / T
            conv = cfg.ssm_heads * 2 * cfg.headdim * cfg.d_state
            ssd += (_ssd_per_token(cfg) * (T - m) + conv * m) / T if m < T else 0.0
    dense = 2.0 * dense_params(cfg)
    return {"dense": dense, "attention": attn, "ssd": ssd, "total": dense + attn + ssd}


def train_flops_per_token(cfg: ModelConfig, T: int) -> dict[str, float]:
    """Forward + backward (3 x forward) FLOPs per token, same keys as `forward_flops_per_token`."""
    return {k: 3.0 * v for k, v in forward_flops_per_token(cfg, T).items()}
