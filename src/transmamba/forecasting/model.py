"""Mambaformer (arXiv 2404.14757 v1) and the paper's comparison models, built from the library's layers.

A decoder-only forecaster with one token per time step:

    e_t  = Conv1d_k3,circular(x)_t + W_time · mark_t  [+ sinusoid(t) for the variants that use one]
    Mambaformer:       h = LN(e + Mamba(e));  h = LN(h + Attn(h));  h = LN(h + Mamba(h))
    ŷ_t  = W_out · h_t

Every sub-layer is post-norm (``LayerNorm(x + f(x))``), as in the official code; there is no feed-forward
sub-layer except in the Transformer baseline. Attention is causal (SDPA) without RoPE. The input sequence is
``label_len`` known steps followed by ``pred_len`` placeholder tokens (value 0, time features of the future
stamps); the forecast is read at the last ``pred_len`` positions (``Mambaformer.forecast_window``).

``revin`` (not in the paper) adds instance normalisation as Time-Series-Library models have it (RevIN without
the affine part): each window's known rows are standardised per variable with their own mean and standard
deviation, the model forecasts in those units, and the forecast is mapped back:

    μ, σ = mean, std of known[:, :, c] over time;   ŷ = σ · f((known − μ) / σ, 0 …) + μ

It removes the level shift between the training years and the test period, which a point-token model
cannot otherwise follow (docs/forecasting.md).

Architectures (``arch``), with the positional-encoding default of the official scripts:

| arch               | sub-layers (n_layers = 1)              | positional encoding |
|--------------------|----------------------------------------|---------------------|
| ``mambaformer``    | Mamba, then [Attention, Mamba] × n     | no                  |
| ``attention-mamba``| [Attention, Mamba] × n                 | yes (sinusoidal)    |
| ``mamba-attention``| [Mamba, Attention] × n                 | no                  |
| ``mamba``          | [Mamba, Mamba] × n (*)                 | no                  |
| ``transformer``    | [Attention, FFN] × n (decoder-only)    | yes (sinusoidal)    |

(*) the paper's README describes the Mamba baseline as "two Mamba blocks" per layer; the released script
stacks a single Mamba block (d_layers 1). We use two, so it has as many Mamba blocks as Mambaformer.

``mixer`` picks the Mamba sub-layer: ``mamba1`` (the paper's, default), ``mamba2`` or ``transmamba``
(a TransMamba layer with TransPoint ``transpoint``: attention before it, SSM from it on).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

__all__ = ["ARCHS", "MIXERS", "MambaformerConfig", "Mambaformer", "TokenEmbedding", "sinusoidal_positions"]

ARCHS = ("mambaformer", "attention-mamba", "mamba-attention", "mamba", "transformer")
MIXERS = ("mamba1", "mamba2", "transmamba")
_POSITIONAL_DEFAULT = {
    "mambaformer": False,
    "attention-mamba": True,
    "mamba-attention": False,
    "mamba": False,
    "transformer": True,
}


@dataclass
class MambaformerConfig:
    """Model settings. Defaults are the paper's where it gives them (d_state 16, d_conv 4, expand 2, 8 heads,
    dropout 0.05, one layer); ``d_model`` 512 is the official code's default."""

    n_vars: int = 7  # input channels = output channels (multivariate "M" mode)
    n_time_features: int = 4  # 'timeF' features: 4 for hourly data, 3 daily, 5 minutely
    arch: str = "mambaformer"
    mixer: str = "mamba1"
    d_model: int = 512
    n_layers: int = 1
    n_heads: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 32  # Mamba-2 / TransMamba head size
    transpoint: int = 0  # TransMamba: tokens before it use attention
    chunk_size: int = 32  # Mamba-2 / TransMamba SSD chunk (speed only; 32 is fastest on CPU at t ~ 300)
    d_ff: int | None = None  # Transformer FFN width (default 4·d_model)
    dropout: float = 0.05
    positional: bool | None = None  # None: the arch's default (table above)
    time_features: bool = True  # add W_time · mark (the paper does); False: value embedding only
    revin: bool = False  # per-window instance normalisation of the known rows (module doc); not the paper's

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"MambaformerConfig: arch {self.arch!r} not in {ARCHS}")
        if self.mixer not in MIXERS:
            raise ValueError(f"MambaformerConfig: mixer {self.mixer!r} not in {MIXERS}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"MambaformerConfig: d_model {self.d_model} not divisible by n_heads {self.n_heads}"
            )
        for name in ("n_vars", "n_time_features", "d_model", "n_layers", "n_heads", "d_state"):
            if getattr(self, name) < 1:
                raise ValueError(f"MambaformerConfig: {name} must be >= 1, got {getattr(self, name)}")

    @property
    def use_positional(self) -> bool:
        return _POSITIONAL_DEFAULT[self.arch] if self.positional is None else self.positional

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MambaformerConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class TokenEmbedding(nn.Module):
    """Value embedding: Conv1d(C → D, kernel 3, circular padding, no bias) along time, as Informer's.

    Circular padding wraps the first and last step into each other's window. That is the paper's choice; it
    lets the first look-back token see the last placeholder (a zero row) — harmless, no target leaks.
    """

    def __init__(self, n_vars: int, d_model: int):
        super().__init__()
        self.conv = nn.Conv1d(n_vars, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, t, C) -> (b, t, D)
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def sinusoidal_positions(t: int, d: int, *, device=None, dtype=None) -> torch.Tensor:
    """(t, d): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d, device=device)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)[:, : d // 2]
    return pe.to(dtype or torch.float32)


class _FFN(nn.Module):
    """Transformer feed-forward: Linear → GELU → dropout → Linear (the baseline's 1×1 convolutions)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(nn.functional.gelu(self.fc1(x))))


class _PostNorm(nn.Module):
    """``LayerNorm(x + dropout(f(x)))``; ``kind`` names f for repr and tests ('mamba', 'attention', 'ffn')."""

    def __init__(self, kind: str, fn: nn.Module, d_model: int, dropout: float):
        super().__init__()
        self.kind = kind
        self.fn = fn
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.fn(x)))

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


def _make_mamba(cfg: MambaformerConfig) -> nn.Module:
    if cfg.mixer == "mamba1":
        from transmamba.layers.mamba1 import Mamba1

        return Mamba1(cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand)
    if cfg.mixer == "mamba2":
        from transmamba.layers.mamba2 import Mamba2

        return Mamba2(
            cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, headdim=_headdim(cfg)
        )
    from transmamba.layers.transmamba import TransMamba

    return TransMamba(
        cfg.d_model,
        d_state=cfg.d_state,
        d_conv=cfg.d_conv,
        expand=cfg.expand,
        headdim=_headdim(cfg),
        transpoint=cfg.transpoint,
    )


def _headdim(cfg: MambaformerConfig) -> int:
    d_inner = cfg.expand * cfg.d_model
    h = min(cfg.headdim, d_inner)
    while d_inner % h:
        h //= 2
    return h


def _make_attention(cfg: MambaformerConfig) -> nn.Module:
    from transmamba.layers.attention import Attention

    # no RoPE (the paper's point: Mamba supplies the order); biased projections as the official code
    return Attention(cfg.d_model, cfg.n_heads, cfg.n_heads, rope=False, bias=True)


class _Mixer(nn.Module):
    """Adapts a library token mixer (``forward(hidden, *, seq_idx=None, state=None)``) to ``f(x)``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        return out[0] if isinstance(out, tuple) else out


class Mambaformer(nn.Module):
    """Decoder-only forecaster: ``forward(x (b, t, C), mark (b, t, F)) -> (b, t, C)`` (see module doc)."""

    def __init__(self, config: MambaformerConfig):
        super().__init__()
        self.config = cfg = config
        self.value_embedding = TokenEmbedding(cfg.n_vars, cfg.d_model)
        self.time_embedding = nn.Linear(cfg.n_time_features, cfg.d_model, bias=False)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        kinds = self.sublayer_kinds(cfg)
        self.layers = nn.ModuleList([self._sublayer(k) for k in kinds])
        self.head = nn.Linear(cfg.d_model, cfg.n_vars)

    @staticmethod
    def sublayer_kinds(cfg: MambaformerConfig) -> list[str]:
        """The residual sub-layers in order, e.g. ['mamba', 'attention', 'mamba'] for Mambaformer."""
        per_layer = {
            "mambaformer": ["attention", "mamba"],
            "attention-mamba": ["attention", "mamba"],
            "mamba-attention": ["mamba", "attention"],
            "mamba": ["mamba", "mamba"],
            "transformer": ["attention", "ffn"],
        }[cfg.arch]
        head = ["mamba"] if cfg.arch == "mambaformer" else []  # the pre-processing Mamba block
        return head + per_layer * cfg.n_layers

    def _sublayer(self, kind: str) -> nn.Module:
        cfg = self.config
        if kind == "mamba":
            fn = _Mixer(_make_mamba(cfg))
            drop = 0.0  # the official Mamba sub-layers have no dropout on the residual branch
        elif kind == "attention":
            fn, drop = _Mixer(_make_attention(cfg)), cfg.dropout
        else:
            fn, drop = _FFN(cfg.d_model, cfg.d_ff or 4 * cfg.d_model, cfg.dropout), cfg.dropout
        return _PostNorm(kind, fn, cfg.d_model, drop)

    def embed(self, x: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
        h = self.value_embedding(x)
        if self.config.time_features:
            h = h + self.time_embedding(mark)
        if self.config.use_positional:
            h = h + sinusoidal_positions(x.shape[1], self.config.d_model, device=x.device, dtype=h.dtype)
        return self.embed_dropout(h)

    def forward(self, x: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.n_vars:
            raise ValueError(f"Mambaformer: x must be (b, t, {cfg.n_vars}), got {tuple(x.shape)}")
        if mark.shape[:2] != x.shape[:2] or mark.shape[-1] != cfg.n_time_features:
            raise ValueError(
                f"Mambaformer: mark must be (b, t, {cfg.n_time_features}) matching x "
                f"{tuple(x.shape)}, got {tuple(mark.shape)}"
            )
        h = self.embed(x, mark)  # (b, t, D)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)  # (b, t, C)

    def forecast_window(self, known: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
        """Decoder-only forecast: known (b, K, C) rows, mark (b, K + H, F) time features of the known rows and
        of the H future stamps -> (b, H, C). The model reads ``[known, 0 …]`` (H zero placeholders); with
        ``revin`` the known rows are standardised per window first and the output mapped back."""
        H = mark.shape[1] - known.shape[1]
        if H < 1:
            raise ValueError(f"Mambaformer: mark has {mark.shape[1]} steps for {known.shape[1]} known rows")
        if self.config.revin:
            mean = known.mean(dim=1, keepdim=True)  # (b, 1, C)
            std = torch.sqrt(known.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
            known = (known - mean) / std
        dec = torch.cat([known, known.new_zeros(known.shape[0], H, known.shape[2])], dim=1)
        out = self(dec, mark)[:, -H:]  # (b, H, C)
        if self.config.revin:
            out = out * std + mean
        return out

    @torch.no_grad()
    def forecast(self, x: torch.Tensor, x_mark: torch.Tensor, future_mark: torch.Tensor) -> torch.Tensor:
        """x (b, L, C), x_mark (b, L, F), future_mark (b, H, F) -> forecast (b, H, C)."""
        return self.forecast_window(x, torch.cat([x_mark, future_mark], dim=1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (model config + ``extra``, e.g. scaler, data),
        each through a temporary file and ``os.replace`` (a crash never leaves a half-written file)."""
        import os

        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = d / f".model.safetensors.tmp-{os.getpid()}"
        save_file(state, str(tmp))
        os.replace(tmp, d / "model.safetensors")
        tmp = d / f".config.json.tmp-{os.getpid()}"
        text = json.dumps({"model": self.config.to_dict(), **(extra or {})}, indent=2, default=str)
        tmp.write_text(text + "\n")
        os.replace(tmp, d / "config.json")
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> tuple[Mambaformer, dict]:
        """Load a directory written by ``save_pretrained``; returns (model, the config.json dict).

        The config is untrusted: its model section must build a valid config, and every tensor shape is
        checked against the safetensors header on a meta-device model before anything is allocated."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from transmamba.errors import MismatchError, UntrustedFileError

        d = Path(directory)
        if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{d}: expected config.json and model.safetensors (a forecast checkpoint)"
            )
        try:
            meta = json.loads((d / "config.json").read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise MismatchError(f"{d / 'config.json'} is not valid JSON ({err})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise MismatchError(f"{d} is not a forecast checkpoint (its config.json has no 'model' and "
                                "'data' sections; score a language-model checkpoint with `transmamba eval`)")
        try:
            cfg = MambaformerConfig.from_dict(meta["model"])
        except (TypeError, ValueError) as err:
            raise MismatchError(f"{d / 'config.json'}: not a valid forecast model config ({err})") from None
        try:
            with safe_open(str(d / "model.safetensors"), framework="pt") as f:
                got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:  # safetensors' own error type: truncated or malformed header
            raise UntrustedFileError(f"{d / 'model.safetensors'} is not a readable safetensors file ({err})"
                                     ) from None
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls(cfg).state_dict().items()}
        if got != expected:
            diff = sorted(set(got) ^ set(expected)) or [k for k in expected if got[k] != expected[k]]
            raise MismatchError(f"{d / 'model.safetensors'} does not fit its config.json (first differing "
                                f"tensor: {diff[0]!r})")
        model = cls(cfg)
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        return model, meta
