"""`ModelConfig`: everything needed to build a `CausalLM`, as a flat JSON-friendly dataclass.

The layer stack is a pattern string (see `models/pattern.py`): one character per residual sub-layer,
`M` Mamba-2, `*` attention, `T` TransMamba, `S` Mamba-1, `-` MLP, `E` MoE. Shapes are validated when the
config is made, and every error says which field is wrong and what would be right.

Sizes (D = d_model):
  attention      n_heads query heads of head_dim (default D / n_heads), n_kv_heads key/value heads (GQA)
  MLP            d_ff hidden units; mlp_act "swiglu" (3 matrices) or "gelu" / "relu2" (2 matrices)
  Mamba-2 / T    d_inner = expand * D, nheads = d_inner / headdim, ngroups groups of B/C of size d_state
  Mamba-1        d_inner = m1_expand * D, state m1_d_state, dt rank m1_dt_rank (default ceil(D / 16))
  MoE            n_experts SwiGLU experts of d_ff_expert (default d_ff) hidden units (mlp_act applies to
                 `-` layers only), top_k per token; the load-balancing loss is added to the LM loss
                 with weight aux_loss_coef
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from transmamba.models import pattern as pattern_mod
from transmamba.models.schedules import resolve_schedule
from transmamba.ops.ssd.args import DEFAULT_CHUNK_SIZE

MLP_ACTS = ("swiglu", "gelu", "relu2")


@dataclasses.dataclass
class ModelConfig:
    vocab_size: int = 512
    d_model: int = 64
    pattern: str = "T-T-"
    # attention (`*`) layers; TransMamba's attention path uses the Mamba-2 shapes instead
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (plain multi-head attention)
    head_dim: int | None = None  # None: = d_model // n_heads
    rope: bool = True  # rotary position embedding on `*` layers (False: no position signal at all)
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0  # rotate the first fraction of each head's channels (Bamba: 0.5)
    attn_qkv_bias: bool = False  # biases on q/k/v_proj (Qwen2, mamba_ssm's qkv_proj_bias)
    attn_out_bias: bool = False  # bias on o_proj
    # MLP (`-`) and MoE (`E`) layers
    d_ff: int | None = None  # None: 4 * d_model (gelu/relu2) or the 8/3 * d_model rounded to 64 (swiglu)
    mlp_act: str = "swiglu"
    mlp_bias: bool = False  # biases on the MLP / expert projections
    # Mamba-2 (`M`) and TransMamba (`T`) layers
    d_state: int = 16
    headdim: int = 16
    expand: int = 2
    ngroups: int = 1
    d_conv: int = 4
    chunk_size: int = DEFAULT_CHUNK_SIZE  # SSD chunk length (speed only; the op's default)
    # Mamba-2 / Mamba-1 mixers (`M`, `T`, `S`): in_proj/out_proj biases, the conv bias, and the clamp
    # [low, high] on Mamba-2's dt = softplus(dt + dt_bias) (None: no clamp; HF's time_step_limit)
    ssm_bias: bool = False
    ssm_conv_bias: bool = True
    time_step_limit: list[float] | None = None
    # TransMamba (`T`) attention-path options; the defaults are the paper's layer. A Transformer converted
    # to TransMamba (`transmamba.conversion`) sets them so that P >= T reproduces the Transformer exactly.
    tm_attn_rope: bool = False  # RoPE (base rope_theta) on Q = C, K = B before the TransPoint
    tm_attn_norm: bool = True  # RMSNorm on the attention output before out_proj
    tm_attn_d_skip: bool = True  # D · x skip on the attention path
    tm_conv_activation: str = "silu"  # "silu" | "none": the activation after the conv on xBC
    # Mamba-1 (`S`) layers
    m1_d_state: int = 16
    m1_expand: int = 2
    m1_d_conv: int = 4
    m1_dt_rank: int | None = None  # None: ceil(d_model / 16)
    m1_inner_layernorms: bool = False  # Jamba's RMSNorms on dt / B / C inside the Mamba-1 mixer
    # mixture of experts (`E`)
    n_experts: int = 8
    top_k: int = 2
    d_ff_expert: int | None = None  # None: = d_ff
    aux_loss_coef: float = 0.01
    moe_renormalize: bool = True  # rescale the top-k router probabilities to sum to 1 (Jamba: False)
    # "softmax": `layers.MoE` (SwiGLU experts); "sigmoid": `layers.SigmoidMoE` (NemotronH): sigmoid scores,
    # choice among the moe_topk_groups best of moe_n_groups groups, weights x moe_scale, experts and a
    # shared expert of moe_shared_ff units (0: none) that are two-matrix MLPs with mlp_act
    moe_router: str = "softmax"
    moe_n_groups: int = 1
    moe_topk_groups: int = 1
    moe_scale: float = 1.0
    moe_shared_ff: int = 0
    # model-wide
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    # one TransPoint per `T` layer (list), or a named schedule "V1".."V9"; None: "V9"
    transpoints: list[int] | str | None = None
    # named schedules are written for 8192 tokens; scale them to this training length (None: unscaled)
    schedule_train_len: int | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.transpoints, tuple):
            self.transpoints = list(self.transpoints)
        if isinstance(self.time_step_limit, tuple):
            self.time_step_limit = list(self.time_step_limit)
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def layer_kinds(self) -> list[str]:
        return pattern_mod.parse_pattern(self.pattern)

    @property
    def n_layers(self) -> int:
        return len(self.layer_kinds)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp_act == "swiglu":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    @property
    def expert_dim(self) -> int:
        return self.d_ff_expert if self.d_ff_expert is not None else self.ffn_dim

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def ssm_heads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def m1_d_inner(self) -> int:
        return self.m1_expand * self.d_model

    @property
    def m1_rank(self) -> int:
        return self.m1_dt_rank if self.m1_dt_rank is not None else math.ceil(self.d_model / 16)

    @property
    def rope_dim(self) -> int:
        """Channels of each attention head that RoPE rotates (an even number)."""
        return int(self.attn_head_dim * self.partial_rotary_factor) // 2 * 2

    @property
    def n_transmamba(self) -> int:
        return sum(k == "transmamba" for k in self.layer_kinds)

    def resolved_transpoints(self) -> list[int]:
        """One P per `T` layer, bottom to top (named schedules expanded and scaled)."""
        sched = self.transpoints if self.transpoints is not None else "V9"
        return resolve_schedule(sched, self.n_transmamba, train_len=self.schedule_train_len)

    # ---- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"ModelConfig: {msg}")

        for name in ("vocab_size", "d_model", "n_heads", "d_state", "headdim", "expand", "ngroups",
                     "d_conv", "chunk_size", "m1_d_state", "m1_expand", "m1_d_conv", "n_experts", "top_k",
                     "max_seq_len"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must be a positive int, got {value!r}")
        kinds = pattern_mod.parse_pattern(self.pattern)  # raises with position + allowed set
        need(self.mlp_act in MLP_ACTS, f"mlp_act must be one of {MLP_ACTS}, got {self.mlp_act!r}")
        need(self.init_std > 0, f"init_std must be > 0, got {self.init_std}")
        need(self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}")
        if "attention" in kinds:
            if self.head_dim is None:
                need(self.d_model % self.n_heads == 0,
                     f"d_model={self.d_model} must be divisible by n_heads={self.n_heads} (or set head_dim)")
            need(self.attn_head_dim > 0 and self.attn_head_dim % 2 == 0 or not self.rope,
                 f"head_dim={self.attn_head_dim} must be even for rotary embeddings (rope=True)")
            need(0 < self.partial_rotary_factor <= 1 and (self.rope_dim > 0 or not self.rope),
                 f"partial_rotary_factor={self.partial_rotary_factor} must be in (0, 1] and leave at "
                 f"least 2 rotated channels of head_dim={self.attn_head_dim}")
            need(self.kv_heads > 0 and self.n_heads % self.kv_heads == 0,
                 f"n_kv_heads={self.kv_heads} must divide n_heads={self.n_heads} (grouped-query attention)")
        if "mamba2" in kinds or "transmamba" in kinds:
            need(self.d_inner % self.headdim == 0,
                 f"d_inner = expand*d_model = {self.d_inner} must be divisible by headdim={self.headdim}")
            need(self.ssm_heads % self.ngroups == 0,
                 f"ngroups={self.ngroups} must divide the number of SSM heads "
                 f"d_inner/headdim = {self.ssm_heads}")
        if self.time_step_limit is not None:
            lim = self.time_step_limit
            need(len(lim) == 2 and 0 <= float(lim[0]) <= float(lim[1]),
                 f"time_step_limit must be [low, high] with 0 <= low <= high (or None), got {lim!r}")
            need("transmamba" not in kinds,
                 "time_step_limit applies to Mamba-2 (`M`) layers only; TransMamba (`T`) layers do not "
                 "support it (set time_step_limit=None)")
        if "transmamba" in kinds:
            need(self.tm_conv_activation in ("silu", "none"),
                 f"tm_conv_activation must be 'silu' or 'none', got {self.tm_conv_activation!r}")
            need(not self.tm_attn_rope or self.d_state % 2 == 0,
                 f"d_state={self.d_state} must be even for tm_attn_rope")
        need(isinstance(self.rope_theta, (int, float)) and not isinstance(self.rope_theta, bool)
             and math.isfinite(self.rope_theta) and self.rope_theta > 0,
             f"rope_theta must be a finite number > 0, got {self.rope_theta!r}")
        if "moe" in kinds:
            need(self.top_k <= self.n_experts, f"top_k={self.top_k} must be <= n_experts={self.n_experts}")
            need(self.aux_loss_coef >= 0, f"aux_loss_coef must be >= 0, got {self.aux_loss_coef}")
            need(self.moe_router in ("softmax", "sigmoid"),
                 f"moe_router must be 'softmax' or 'sigmoid', got {self.moe_router!r}")
            if self.moe_router == "sigmoid":
                g = self.moe_n_groups
                need(g > 0 and self.n_experts % g == 0 and self.n_experts // g >= 2,
                     f"moe_n_groups={g} must split n_experts={self.n_experts} into groups of at least 2")
                need(0 < self.moe_topk_groups <= g,
                     f"moe_topk_groups={self.moe_topk_groups} must be in [1, {g}]")
                need(self.mlp_act != "swiglu", "moe_router='sigmoid' uses two-matrix experts: set mlp_act to "
                     "'relu2' or 'gelu'")
                need(self.moe_shared_ff >= 0, f"moe_shared_ff must be >= 0, got {self.moe_shared_ff}")
            else:
                sigmoid_only = (self.moe_n_groups, self.moe_topk_groups, self.moe_scale, self.moe_shared_ff)
                need(sigmoid_only == (1, 1, 1.0, 0),
                     "moe_n_groups / moe_topk_groups / moe_scale / moe_shared_ff apply to "
                     "moe_router='sigmoid' only")
        need(self.ffn_dim > 0 and self.expert_dim > 0, "d_ff and d_ff_expert must be positive")
        if self.schedule_train_len is not None:
            need(self.schedule_train_len > 0,
                 f"schedule_train_len must be > 0, got {self.schedule_train_len}")
        try:
            self.resolved_transpoints()
        except ValueError as err:
            raise ValueError(f"ModelConfig: transpoints: {err}") from None

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if isinstance(out["transpoints"], tuple):
            out["transpoints"] = list(out["transpoints"])
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        valid = cls.field_names()
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"ModelConfig: unknown keys {unknown}; valid keys: {', '.join(valid)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (unknown field names rejected with the valid list)."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_json(Path(path).read_text())
