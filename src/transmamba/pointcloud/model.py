"""PoinTramba (arXiv 2405.15463): intra-group Transformer, inter-group Mamba over importance-ordered groups.

For a cloud x (n, 3):

    centres c_g = FPS(x, G),  neighbourhood P_g = kNN(c_g, K) − c_g                  (G, K, 3)
    intra-group:  e = MLP_e(P_g) (K, D), p = MLP_p(P_g) (K, D);  e ← Block_l(e + p) for l = 1 … L_intra
                  t_g = max_k LN(e)_k                                                 one D-token per group
    importance:   s_g = MLP_s(t_g) ∈ ℝ   (D → 128 → 1, BN/ReLU);   u_g = norm(MLP_u(t_g)) ∈ S^255
    ordering BIO: π↓ = argsort(s, desc), π↑ = argsort(s, asc);  seq = [t_π↓ ; t_π↑] (2G tokens), likewise
                  the centre embeddings q_g = MLP_q(c_g) and the scores
    inter-group:  h = seq + q;  h ← h + DropPath(Mixer(LN(h))) for 12 layers;  h = LN(h)
    pooling:      f = Σ_i h_i · clamp(s_i, 0, 1)                     (importance; or mean / max over i)
    head:         logits = MLP_cls(f)  (D → 256 → 256 → C, BN/ReLU/Dropout 0.5)

Training loss (the official recipe, weights 1 : 1 : 1):

    L = CE(logits, y) + L_GLR + L_score,      v = norm(MLP_v(f)) ∈ S^255 (the cloud's global projection)
    L_GLR   = mean over (cloud j, group g) of CE(64 · u_{j,g} · [v_1 … v_B], j)     (global-local InfoNCE)
    L_score = mean_j Σ_g SmoothL1(s_{j,g}, cos(v_j, u_{j,g}))

The regression target cos(v, u) is detached (a choice of ours: the official code lets the score loss pull
the projections toward the predicted scores too). Intra-group attention is bidirectional (softmax over the
K points of the group), 6 heads, q/k/v without bias, drop-path rising linearly to 0.1 over the blocks.
Inter-group mixers are causal (unidirectional) Mamba-1 blocks (d_state 16); the BIO sequence gives every
group a pass in each direction of the importance order.

Ablation switches (``PoinTrambaConfig``): ``ordering`` bio | importance (descending only) | fps (the FPS
order of the groups) | random (a fresh permutation per cloud and call); ``pooling`` importance | mean | max;
``aux_losses`` on / off; ``mixer`` mamba1 | mamba2 | transmamba (TransPoint ``transpoint``, default the
number of groups: the descending pass attends, the ascending pass runs the SSM) | attention (bidirectional
softmax attention: the all-attention baseline, see ``attention_baseline``).

Presets (``PRESETS``): ``pointramba`` (the paper's classifier: D 384, G 256, K 16, 4 intra blocks, 12 Mamba
blocks, about 19.5 M parameters for 40 classes) and ``pointramba-tiny`` (sized to train on 2 CPU cores in
minutes on the synthetic shapes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.layers.attention import Attention
from transmamba.pointcloud.ops import group_points

__all__ = [
    "ORDERINGS",
    "POOLINGS",
    "MIXERS",
    "PRESETS",
    "PoinTrambaConfig",
    "PoinTramba",
    "PoinTrambaOutput",
    "attention_baseline",
]

ORDERINGS = ("bio", "importance", "fps", "random")
POOLINGS = ("importance", "mean", "max")
MIXERS = ("mamba1", "mamba2", "transmamba", "attention")


@dataclass
class PoinTrambaConfig:
    """Model settings; defaults are the official classification config (PointMambaFormer, ModelNet40)."""

    num_classes: int = 40
    num_points: int = 1024  # the cloud size the model is trained at (data default; the model takes any n)
    num_groups: int = 256  # G, FPS centres
    group_size: int = 16  # K, neighbours per group
    dim: int = 384  # D, token width everywhere
    embed_hidden: int = 128  # hidden width of the point / position MLPs (3 -> 128 -> D)
    intra_depth: int = 4
    intra_heads: int = 6
    intra_mlp_ratio: float = 4.0
    intra_drop_path: float = 0.1
    depth: int = 12  # inter-group mixer blocks
    mixer: str = "mamba1"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64  # mamba2 / transmamba heads
    transpoint: int | None = None  # transmamba: None = num_groups (the descending BIO pass attends)
    attn_heads: int = 6  # mixer 'attention'
    chunk_size: int = 32  # scan / SSD chunk length of the mixers (speed only; 32 is fastest on CPU at T ~ 64)
    drop_path: float = 0.3  # inter-group blocks (the official yaml)
    ordering: str = "bio"
    pooling: str = "importance"
    aux_losses: bool = True
    score_hidden: int = 128
    proj_dim: int = 256  # GLR projection width
    head_hidden: int = 256
    head_dropout: float = 0.5
    head_norm: str = "batch"  # batch (the paper's) | layer
    glr_scale: float = 64.0  # InfoNCE logit scale (1 / temperature)

    def __post_init__(self):
        for name, allowed in (
            ("ordering", ORDERINGS),
            ("pooling", POOLINGS),
            ("mixer", MIXERS),
            ("head_norm", ("batch", "layer")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"PoinTrambaConfig: {name} {getattr(self, name)!r} not in {allowed}")
        for name in ("num_classes", "num_groups", "group_size", "dim", "intra_depth", "intra_heads", "depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PoinTrambaConfig: {name} must be a positive int, got {v!r}")
        if self.dim % self.intra_heads:
            raise ValueError(
                f"PoinTrambaConfig: dim {self.dim} not divisible by intra_heads {self.intra_heads}"
            )
        if self.mixer == "attention" and self.dim % self.attn_heads:
            raise ValueError(
                f"PoinTrambaConfig: dim {self.dim} not divisible by attn_heads {self.attn_heads}"
            )
        if self.num_points < max(self.num_groups, self.group_size):
            raise ValueError(
                f"PoinTrambaConfig: num_points {self.num_points} < max(num_groups {self.num_groups}, "
                f"group_size {self.group_size})"
            )

    @property
    def seq_len(self) -> int:
        """Tokens the inter-group mixers see: 2G for BIO, else G."""
        return 2 * self.num_groups if self.ordering == "bio" else self.num_groups

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PoinTrambaConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"PoinTrambaConfig: unknown keys {unknown}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> PoinTrambaConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown point-cloud preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    # the official ModelNet40 classifier (cfgs/finetune_modelnet_group_size_16_256.yaml + run.sh flags)
    "pointramba": {},
    # 2-CPU-core flavour: narrow, shallow, few groups; ordering, pooling and losses as the paper's
    "pointramba-tiny": {
        "num_classes": 8,
        "num_points": 256,
        "num_groups": 32,
        "group_size": 16,
        "dim": 64,
        "embed_hidden": 32,
        "intra_depth": 1,
        "intra_heads": 4,
        "intra_drop_path": 0.0,
        "depth": 2,
        "attn_heads": 4,
        "headdim": 32,
        "drop_path": 0.0,
        "score_hidden": 32,
        "proj_dim": 64,
        "head_hidden": 64,
        "head_dropout": 0.2,
    },
}


# --------------------------------------------------------------------------------------------- blocks


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's residual branch with probability p, scale the rest by 1/(1−p)."""
    if p <= 0.0 or not training:
        return x
    keep = (torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= p).to(x.dtype)
    return x * keep / (1.0 - p)


class FullAttention(Attention):
    """The library's ``Attention`` (same projections and parameters) without the causal mask:
    ``out = o_proj(softmax(q kᵀ / √dh) v)`` over every token of the row, no RoPE. hidden (b, t, D)."""

    def forward(self, hidden: torch.Tensor, **_: object) -> torch.Tensor:
        b, t, _ = hidden.shape
        q, k, v = self._qkv(hidden)  # (b, t, h, dh)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class _Mlp(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d_in, d_hidden), act(), nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _BNMlp(nn.Module):
    """Linear → BatchNorm → ReLU → Linear on tokens (..., d_in), BN over every token of the batch."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.fc1, self.bn, self.fc2 = (
            nn.Linear(d_in, d_hidden),
            nn.BatchNorm1d(d_hidden),
            nn.Linear(d_hidden, d_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = self.bn(self.fc1(x.reshape(-1, x.shape[-1])))
        return self.fc2(F.relu(h)).reshape(*lead, -1)


class IntraBlock(nn.Module):
    """Pre-LN Transformer block inside a group: x + DP(Attn(LN x)), then + DP(MLP(LN x)); (b·G, K, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = FullAttention(dim, heads, rope=False, bias=False, out_bias=True)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def _make_mixer(cfg: PoinTrambaConfig) -> nn.Module:
    if cfg.mixer == "mamba1":
        from transmamba.layers.mamba1 import Mamba1

        return Mamba1(
            cfg.dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, chunk_size=cfg.chunk_size
        )
    if cfg.mixer == "attention":
        return FullAttention(cfg.dim, cfg.attn_heads, rope=False, bias=False, out_bias=True)
    d_inner = cfg.expand * cfg.dim
    headdim = min(cfg.headdim, d_inner)
    while d_inner % headdim:
        headdim //= 2
    kw = {
        "d_state": cfg.d_state,
        "d_conv": cfg.d_conv,
        "expand": cfg.expand,
        "headdim": headdim,
        "chunk_size": cfg.chunk_size,
    }
    if cfg.mixer == "mamba2":
        from transmamba.layers.mamba2 import Mamba2

        return Mamba2(cfg.dim, **kw)
    from transmamba.layers.transmamba import TransMamba

    P = cfg.num_groups if cfg.transpoint is None else cfg.transpoint
    return TransMamba(cfg.dim, transpoint=P, **kw)


class InterBlock(nn.Module):
    """Pre-LN residual around a token mixer over the group sequence: h + DP(Mixer(LN h)); (b, T, D)."""

    def __init__(self, cfg: PoinTrambaConfig, drop_path: float):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim)
        self.mixer = _make_mixer(cfg)
        self.drop_path = drop_path

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.mixer(self.norm(h))
        out = out[0] if isinstance(out, tuple) else out
        return h + drop_path(out, self.drop_path, self.training)


# ---------------------------------------------------------------------------------------------- model


@dataclass
class PoinTrambaOutput:
    """logits (b, C); scores (b, G) per group in FPS order; centres (b, G, 3); local_proj (b, G, P) and
    global_proj (b, P) unit vectors for the auxiliary losses; order (b, T) group index of each token."""

    logits: torch.Tensor
    scores: torch.Tensor
    centres: torch.Tensor
    local_proj: torch.Tensor
    global_proj: torch.Tensor
    order: torch.Tensor


class PoinTramba(nn.Module):
    """``forward(points (b, n, 3), *, fps_start=None) -> PoinTrambaOutput``; ``loss(out, labels)``."""

    def __init__(self, config: PoinTrambaConfig):
        super().__init__()
        self.config = cfg = config
        D = cfg.dim
        self.point_embed = _Mlp(3, cfg.embed_hidden, D)
        self.point_pos = _Mlp(3, cfg.embed_hidden, D)
        rates = [cfg.intra_drop_path * i / max(1, cfg.intra_depth - 1) for i in range(cfg.intra_depth)]
        self.intra = nn.ModuleList([IntraBlock(D, cfg.intra_heads, cfg.intra_mlp_ratio, r) for r in rates])
        self.intra_norm = nn.LayerNorm(D)
        self.score_mlp = _BNMlp(D, cfg.score_hidden, 1)
        self.local_proj = _BNMlp(D, 128 if cfg.proj_dim >= 128 else cfg.proj_dim, cfg.proj_dim)
        self.centre_pos = _Mlp(3, cfg.embed_hidden, D)
        self.blocks = nn.ModuleList([InterBlock(cfg, cfg.drop_path) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(D)
        H = cfg.head_hidden
        norm = nn.BatchNorm1d if cfg.head_norm == "batch" else nn.LayerNorm
        self.head = nn.Sequential(
            nn.Linear(D, H),
            norm(H),
            nn.ReLU(),
            nn.Dropout(cfg.head_dropout),
            nn.Linear(H, H),
            norm(H),
            nn.ReLU(),
            nn.Dropout(cfg.head_dropout),
            nn.Linear(H, cfg.num_classes),
        )
        self.global_proj = _BNMlp(D, 128 if cfg.proj_dim >= 128 else cfg.proj_dim, cfg.proj_dim)
        # scores start near 0.5, inside clamp(s, 0, 1)'s linear range: importance pooling begins as a scaled
        # mean and both the pooling and the score loss can move every score (a score that starts below 0
        # gets no gradient through the clamp, and with all of a cloud's scores there its feature is 0)
        nn.init.normal_(self.score_mlp.fc2.weight, std=0.02)
        nn.init.constant_(self.score_mlp.fc2.bias, 0.5)

    # ------------------------------------------------------------------------------------------ pieces
    def group_tokens(self, points: torch.Tensor, fps_start=None) -> tuple[torch.Tensor, torch.Tensor]:
        """points (b, n, 3) -> (group tokens (b, G, D), centres (b, G, 3)), groups in FPS order."""
        cfg = self.config
        hood, centres, _ = group_points(points, cfg.num_groups, cfg.group_size, start=fps_start)
        b, G, K, _ = hood.shape
        hood = hood.reshape(b * G, K, 3).to(self.point_embed.fc1.weight.dtype)
        e, p = self.point_embed(hood), self.point_pos(hood)  # (bG, K, D)
        for blk in self.intra:
            e = blk(e + p)  # the position embedding is re-added before every block
        tokens = self.intra_norm(e).max(dim=1).values  # (bG, D)
        return tokens.reshape(b, G, -1), centres

    def _order(self, scores: torch.Tensor) -> torch.Tensor:
        """Group index of each token of the inter-group sequence: scores (b, G) -> (b, T)."""
        cfg = self.config
        b, G = scores.shape
        if cfg.ordering == "bio":
            desc = scores.argsort(dim=1, descending=True)
            return torch.cat([desc, desc.flip(1)], dim=1)  # ascending = the descending order reversed
        if cfg.ordering == "importance":
            return scores.argsort(dim=1, descending=True)
        if cfg.ordering == "fps":
            return torch.arange(G, device=scores.device).expand(b, G)
        return torch.rand(b, G, device=scores.device).argsort(dim=1)

    def forward(self, points: torch.Tensor, *, fps_start=None) -> PoinTrambaOutput:
        cfg = self.config
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"PoinTramba: points must be (batch, n, 3), got {tuple(points.shape)}")
        if points.shape[1] < max(cfg.num_groups, cfg.group_size):
            raise ValueError(
                f"PoinTramba: {points.shape[1]} points per cloud, need at least "
                f"max(num_groups {cfg.num_groups}, group_size {cfg.group_size})"
            )
        tokens, centres = self.group_tokens(points, fps_start)  # (b, G, D), (b, G, 3)
        scores = self.score_mlp(tokens).squeeze(-1)  # (b, G)
        local = F.normalize(self.local_proj(tokens), dim=-1)  # (b, G, P)
        order = self._order(scores.detach())  # (b, T)
        pos = self.centre_pos(centres.to(tokens.dtype))  # (b, G, D)
        idx = order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        h = torch.gather(tokens, 1, idx) + torch.gather(pos, 1, idx)  # (b, T, D)
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        if cfg.pooling == "importance":
            w = torch.gather(scores, 1, order).clamp(0, 1)  # (b, T)
            feat = (h * w.unsqueeze(-1)).sum(dim=1)  # (b, D)
        elif cfg.pooling == "mean":
            feat = h.mean(dim=1)
        else:
            feat = h.max(dim=1).values
        logits = self.head(feat)
        glob = F.normalize(self.global_proj(feat), dim=-1)  # (b, P)
        return PoinTrambaOutput(logits, scores, centres, local, glob, order)

    def loss(self, out: PoinTrambaOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total training loss and its parts (module doc); without ``aux_losses`` only the cross-entropy."""
        ce = F.cross_entropy(out.logits, labels)
        parts = {"ce": float(ce.detach())}
        if not self.config.aux_losses:
            return ce, parts
        b, G, P = out.local_proj.shape
        sim = (
            torch.einsum("bgp,cp->bgc", out.local_proj, out.global_proj) * self.config.glr_scale
        )  # (b, G, b)
        target = torch.arange(b, device=sim.device).repeat_interleave(G)
        glr = F.cross_entropy(sim.reshape(b * G, b), target)
        cos = (out.local_proj * out.global_proj.unsqueeze(1)).sum(-1)  # (b, G), unit vectors
        score = F.smooth_l1_loss(out.scores, cos.detach(), reduction="none").sum(dim=1).mean()
        parts.update(glr=float(glr.detach()), score=float(score.detach()))
        return ce + glr + score, parts

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` ({"model": config, **extra})."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(d / "model.safetensors"))
        meta = {"model_type": "pointramba", "model": self.config.to_dict(), **(extra or {})}
        (d / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> tuple[PoinTramba, dict]:
        """Load a directory written by ``save_pretrained`` (or a checkpoint step folder); -> (model, meta)."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{d}: expected config.json and model.safetensors (a pointcloud checkpoint)"
            )
        meta = json.loads((d / "config.json").read_text())
        if meta.get("model_type") != "pointramba":
            raise ValueError(
                f"{d / 'config.json'}: not a PoinTramba checkpoint (model_type {meta.get('model_type')!r})"
            )
        model = cls(PoinTrambaConfig.from_dict(meta["model"]))
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        return model, meta


def _block_params(cfg: PoinTrambaConfig) -> int:
    return sum(p.numel() for p in InterBlock(cfg, 0.0).parameters())


def attention_baseline(cfg: PoinTrambaConfig) -> PoinTrambaConfig:
    """The all-attention model of the same size: every inter-group Mamba block replaced by a bidirectional
    attention block, with as many blocks as brings the parameter count closest to ``cfg``'s, groups read once
    in FPS order (attention is order-free and the centre embedding carries position, so a BIO sequence would
    only repeat every token). Everything else (grouping, intra-group Transformer, scores, pooling, head,
    losses) is ``cfg``'s."""
    with torch.device("meta"):
        ours = _block_params(cfg) * cfg.depth
        per = _block_params(replace(cfg, mixer="attention"))
    depth = max(1, round(ours / per))
    return replace(cfg, mixer="attention", depth=depth, ordering="fps")
