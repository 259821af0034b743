"""`CausalLM`: a decoder-only language model whose layer stack follows a pattern string.

    tokens (b, t) -> embedding (b, t, D) -> Block_0 ... Block_{L-1} -> RMSNorm -> lm_head -> logits (b, t, V)

Each pattern character is one pre-norm residual Block `x + sublayer(rms_norm(x))` (`layers/block.py`):
`M` Mamba-2, `*` attention, `T` TransMamba, `S` Mamba-1, `-` MLP, `E` MoE. The LM head shares the
embedding matrix when `tie_embeddings`.

Loss: `labels` has input_ids' shape; the model shifts internally (position i predicts labels[i+1]) and
ignores -100. `loss = CE + aux_loss_coef * sum of the MoE layers' load-balancing losses`; `out.aux_loss`
is that weighted sum (0 without MoE layers).

Initialisation (GPT-2 style): embeddings and every nn.Linear weight ~ N(0, init_std), biases 0; the
projections that write into the residual stream (mixers' `out_proj`/`o_proj`, MLPs' down projection) get
std = init_std / sqrt(2 * n_layers), where n_layers counts mixer+MLP pairs the GPT-2 way, i.e. 2 * n_layers
= the number of residual sub-layers = len(pattern). Mixers keep their own special inits (Mamba's A_log,
dt_bias, D, conv1d, and Mamba-1's dt_proj) and the MoE router keeps N(0, init_std) like other linears.
The `in_proj` of Mamba-2 / TransMamba mixers keeps torch's default Linear init (uniform, std
1/sqrt(3 d_model)), as mamba_ssm's and HF's Mamba-2 language models do: its output feeds products
(C·B x on the SSM path, softmax(C·B) x on the attention path), and N(0, 0.02) instead makes them
~(0.02 √(3 d_model))² smaller at small widths (1/13 at d_model 64); see docs/reproduction.md, Diagnosis.

Decoding: `step(ids, cache)` runs one token per row through every layer's own static `step`, each residual
add fused with the next norm; `layer_modes` and `step_constants` fix what a CUDA graph of it bakes in
(`inference/static_decode.py` captures and replays this very method).

Checkpoints: `save_pretrained(dir)` writes config.json and model.safetensors (no pickle), each through a
temporary file and os.replace, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from transmamba.layers.norm import add_norm, embed_norm
from transmamba.models.config import ModelConfig
from transmamba.models.pattern import MIXER_KINDS
from transmamba.models.schedules import resolve_schedule
from transmamba.ops.skinny_linear import skinny_linear

if TYPE_CHECKING:  # models never import inference at import time (inference does not import models at all)
    from transmamba.inference.cache import ModelCache

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# module-name suffixes of the projections that write into the residual stream (scaled init)
RESIDUAL_OUT_NAMES = ("out_proj", "o_proj", "down_proj")
# Linear layers whose special init belongs to the mixer (Mamba-1's dt_proj: uniform weight, softplus⁻¹ bias)
KEEP_INIT_NAMES = ("dt_proj",)
# layer kinds whose `step` takes reduce=False (the output projection's split-K partials go to add_norm)
_STEP_PARTIAL_KINDS = ("attention", "mamba2", "transmamba", "mlp")


@dataclasses.dataclass
class CausalLMOutput:
    logits: torch.Tensor | None  # (b, t, V); None with `fused_loss` and labels
    loss: torch.Tensor | None = None  # scalar: CE + aux (when labels are given)
    aux_loss: torch.Tensor | None = None  # scalar: weighted MoE load-balancing loss (0 without MoE)


class PlainMLP(nn.Module):
    """Two-matrix MLP for the non-gated activations of the papers' presets (`layers.MLP` is SwiGLU):

        gelu:  down_proj(gelu(up_proj(x)))          relu2: down_proj(relu(up_proj(x))**2)  (squared ReLU,
                                                    Megatron's choice for the Mamba-2-Hybrid MLPs)
    """

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool = False):
        super().__init__()
        if activation not in ("gelu", "relu2"):
            raise ValueError(f"PlainMLP: activation must be 'gelu' or 'relu2', got {activation!r}")
        self.activation = activation
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(hidden)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h).square()
        return self.down_proj(h)

    def step(self, hidden: torch.Tensor, *, reduce: bool = True) -> torch.Tensor:
        """The forward for one decode token per row, hidden (b, D) -> (b, D), through `ops.skinny_linear`
        (on CUDA the activation fused into the up projection); reduce=False lets down_proj return its fp32
        split-K partial sums (S, b, D) (no bias only), for `layers.norm.add_norm` to sum."""
        h = skinny_linear(hidden, self.up_proj, act=self.activation)
        return skinny_linear(h, self.down_proj, reduce=reduce or self.down_proj.bias is not None)


def build_sublayer(kind: str, cfg: ModelConfig, transpoint: int | None = None) -> nn.Module:
    """The nn.Module for one pattern character (without its norm / residual)."""
    from transmamba import layers as L

    if kind == "mamba2" or kind == "transmamba":
        kw = dict(d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, headdim=cfg.headdim,
                  ngroups=cfg.ngroups, chunk_size=cfg.chunk_size, norm_eps=cfg.norm_eps, bias=cfg.ssm_bias,
                  conv_bias=cfg.ssm_conv_bias)
        if kind == "mamba2":
            limit = None if cfg.time_step_limit is None else tuple(cfg.time_step_limit)
            return L.Mamba2(cfg.d_model, dt_limit=limit, **kw)
        return L.TransMamba(
            cfg.d_model, transpoint=int(transpoint or 0), attn_d_skip=cfg.tm_attn_d_skip,
            attn_rope=cfg.tm_attn_rope, rope_base=cfg.rope_theta, attn_norm=cfg.tm_attn_norm,
            conv_activation=None if cfg.tm_conv_activation == "none" else "silu", **kw)
    if kind == "attention":
        return L.Attention(cfg.d_model, cfg.n_heads, n_kv_heads=cfg.kv_heads, head_dim=cfg.attn_head_dim,
                           rope=cfg.rope, rope_base=cfg.rope_theta, bias=cfg.attn_qkv_bias,
                           out_bias=cfg.attn_out_bias, rope_dim=cfg.rope_dim)
    if kind == "mamba1":
        return L.Mamba1(cfg.d_model, d_state=cfg.m1_d_state, d_conv=cfg.m1_d_conv, expand=cfg.m1_expand,
                        dt_rank=cfg.m1_rank, bias=cfg.ssm_bias, conv_bias=cfg.ssm_conv_bias,
                        inner_layernorms=cfg.m1_inner_layernorms, norm_eps=cfg.norm_eps)
    if kind == "mlp":
        if cfg.mlp_act == "swiglu":
            return L.MLP(cfg.d_model, cfg.ffn_dim, bias=cfg.mlp_bias)
        return PlainMLP(cfg.d_model, cfg.ffn_dim, cfg.mlp_act, bias=cfg.mlp_bias)
    if kind == "moe" and cfg.moe_router == "sigmoid":  # NemotronH's MoE: two-matrix experts with mlp_act
        return L.SigmoidMoE(cfg.d_model, cfg.expert_dim,
                            lambda ff: PlainMLP(cfg.d_model, ff, cfg.mlp_act, bias=cfg.mlp_bias),
                            n_experts=cfg.n_experts, top_k=cfg.top_k, n_groups=cfg.moe_n_groups,
                            topk_groups=cfg.moe_topk_groups, renormalize=cfg.moe_renormalize,
                            scale=cfg.moe_scale, shared_ff=cfg.moe_shared_ff)
    if kind == "moe":  # experts are SwiGLU MLPs whatever mlp_act says (Jamba's choice)
        return L.MoE(cfg.d_model, cfg.expert_dim, n_experts=cfg.n_experts, top_k=cfg.top_k,
                     bias=cfg.mlp_bias, renormalize=cfg.moe_renormalize)
    raise ValueError(f"unknown layer kind {kind!r}")


def _merge_stop_ids(*ids: int | list[int] | None) -> list[int] | None:
    """eos_token_id and stop_tokens (each an id, a list of ids or None) -> one list, or None if empty."""
    out: list[int] = []
    for item in ids:
        if item is None:
            continue
        for i in [item] if isinstance(item, int) else item:
            if int(i) not in out:
                out.append(int(i))
    return out or None


def _atomic_write(path: Path, write) -> None:
    """write(tmp_path) then os.replace(tmp_path, path): readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved model is an ordinary readable file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _shape_problems(expected: dict[str, tuple], got: dict[str, tuple]) -> list[str]:
    """Every missing, unexpected or wrongly shaped tensor, one line each."""
    problems = []
    for k in sorted(set(expected) - set(got)):
        problems.append(f"missing tensor {k!r} (model expects shape {expected[k]})")
    for k in sorted(set(got) - set(expected)):
        problems.append(f"unexpected tensor {k!r} of shape {got[k]}")
    for k in sorted(set(got) & set(expected)):
        if got[k] != expected[k]:
            problems.append(f"tensor {k!r} has shape {got[k]} in the checkpoint but the model expects "
                            f"{expected[k]}")
    return problems


class CausalLM(nn.Module):
    """Decoder-only LM over `config.pattern` (see the module docstring); `model(ids)` -> CausalLMOutput."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        from transmamba import layers as L

        if not isinstance(config, ModelConfig):
            raise TypeError(f"CausalLM needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        kinds = config.layer_kinds
        points = iter(config.resolved_transpoints())
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        blocks = []
        for kind in kinds:
            p = next(points) if kind == "transmamba" else None
            blocks.append(L.Block(build_sublayer(kind, config, p), config.d_model, config.norm_eps))
        self.blocks = nn.ModuleList(blocks)
        self.kinds = kinds
        self.norm = L.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # Training-speed options (off by default; they change no result):
        # fused_loss: with `labels`, the loss comes from `ops.cross_entropy.linear_cross_entropy` chunk by
        #   chunk of `loss_chunk_size` tokens and `out.logits` is None (no (b, t, V) logits tensor).
        # gradient_checkpointing: in training with gradients, each block's activations are recomputed in
        #   the backward instead of kept (torch.utils.checkpoint, non-reentrant).
        self.fused_loss = False
        self.loss_chunk_size = 4096
        self.gradient_checkpointing = False

    # ---- construction helpers ------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        from transmamba import layers as L

        std = self.config.init_std
        out_std = std / math.sqrt(len(self.kinds))  # = std / sqrt(2 * n_layers), GPT-2's n_layers
        nn.init.normal_(self.embed.weight, mean=0.0, std=std)
        ssm_in = {id(m.in_proj) for m in self.modules() if isinstance(m, L.Mamba2)}  # Mamba-2 and T mixers
        for name, module in self.named_modules():
            last = name.rsplit(".", 1)[-1]
            if not isinstance(module, nn.Linear) or last in KEEP_INIT_NAMES or module is self.lm_head:
                continue
            if id(module) in ssm_in:  # torch's default init (mamba_ssm's), bias 0
                module.reset_parameters()
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                continue
            nn.init.normal_(module.weight, mean=0.0, std=out_std if last in RESIDUAL_OUT_NAMES else std)
            if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=std)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> CausalLM:
        from transmamba.models.presets import get_preset

        return cls(get_preset(name, **overrides))

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied LM head counted once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
        if exclude_embeddings:
            total -= self.embed.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    def mixer(self, index: int) -> nn.Module:
        return self.blocks[index].mixer

    def transmamba_layers(self) -> list[nn.Module]:
        return [self.mixer(i) for i, k in enumerate(self.kinds) if k == "transmamba"]

    def set_transpoints(self, schedule, *, train_len: int | None = None) -> list[int]:
        """Give every TransMamba layer a new TransPoint: a list (one per `T`) or a name "V1".."V9".

        Named schedules are scaled to `train_len` (default: config.schedule_train_len). Updates the config
        and returns the resolved list. Caches made before the change no longer fit (make new ones).
        """
        layers = self.transmamba_layers()
        if train_len is None:
            train_len = self.config.schedule_train_len
        points = resolve_schedule(schedule, len(layers), train_len=train_len)
        bad = [p for p in points if not 0 <= p <= self.config.max_seq_len]
        if bad and not isinstance(schedule, str):  # named schedules are scaled to train_len by design
            raise ValueError(f"TransPoints {bad} lie outside [0, max_seq_len={self.config.max_seq_len}]; "
                             "give points within the model's length")
        for layer, p in zip(layers, points):
            layer.transpoint = p
        self.config.transpoints = points if not isinstance(schedule, str) else schedule
        self.config.schedule_train_len = train_len
        return points

    # ---- forward / decode ----------------------------------------------------------------------
    def init_cache(self, batch: int, max_len: int | None = None, *, device=None, dtype=None) -> ModelCache:
        """Fresh decode states (position 0) for `batch` rows; `max_len` sizes the KV buffers."""
        from transmamba.inference.cache import ModelCache

        max_len = self.config.max_seq_len if max_len is None else max_len
        device = self.device if device is None else device
        states = []
        for block, kind in zip(self.blocks, self.kinds):
            if kind in MIXER_KINDS:
                states.append(block.mixer.init_state(batch, max_len=max_len, device=device, dtype=dtype))
            else:
                states.append(None)
        return ModelCache(states)

    def _aux_loss(self) -> torch.Tensor:
        aux = self.embed.weight.new_zeros((), dtype=torch.float32)
        for block, kind in zip(self.blocks, self.kinds):
            if kind == "moe":
                layer_aux = getattr(block.mixer, "aux_loss", None)
                if layer_aux is not None:
                    aux = aux + layer_aux.float()
        return aux * self.config.aux_loss_coef

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        seq_idx: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: ModelCache | None = None,
        last_logits_only: bool = False,
    ) -> CausalLMOutput:
        """input_ids (b, t) long; seq_idx (b, t) document ids for packed rows; labels (b, t) with -100
        ignored; cache: prefill continuing from (and updating) the decode states.

        last_logits_only: compute logits (b, 1, V) for the last position only (prefill for generation:
        a 16K x 16 prompt batch would otherwise hold a (16, 16K, V) logits tensor). Not with `labels`.
        """
        if last_logits_only and labels is not None:
            raise ValueError("CausalLM: last_logits_only=True cannot compute a loss over `labels`; drop one")
        if input_ids.ndim != 2:
            raise ValueError(f"CausalLM: input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"CausalLM: cache has {len(cache)} layers, the model {len(self.blocks)}")
        self._check_ids(input_ids, cache)
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"CausalLM: labels must have input_ids' shape {tuple(input_ids.shape)}, "
                             f"got {tuple(labels.shape)}")
        h = self._hidden(input_ids, seq_idx, cache)
        aux = self._aux_loss() if "moe" in self.kinds else None
        if self.fused_loss and labels is not None and not last_logits_only:
            return self._fused_loss(h, labels, aux)
        if last_logits_only:
            h = h[:, -1:]
        logits = self.lm_head(self.norm(h))
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            shift_labels = labels[:, 1:].reshape(-1)
            if bool((shift_labels != -100).any()):
                loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
            else:  # nothing to predict: a zero that still backpropagates
                loss = shift_logits.sum() * 0.0
            if aux is not None:
                loss = loss + aux
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=aux)

    def _hidden(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None,
                cache: ModelCache | None) -> torch.Tensor:
        """The last block's output h (b, t, D), before the final norm."""
        h = self.embed(input_ids)
        ckpt = self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, (block, kind) in enumerate(zip(self.blocks, self.kinds)):
            if ckpt:
                sidx = seq_idx if kind in MIXER_KINDS else None
                h = checkpoint(block, h, seq_idx=sidx, use_reentrant=False)
            elif kind in MIXER_KINDS:
                h = block(h, seq_idx=seq_idx, state=None if cache is None else cache.states[i])
            else:
                h = block(h)
        return h

    @torch.no_grad()
    def argmax_tokens(self, input_ids: torch.Tensor, *, chunk_size: int = 1024) -> torch.Tensor:
        """argmax_v logits[b, t, v] (b, t) long, computed ``chunk_size`` positions at a time, so the
        (b, t, V) logits never exist at once (recall evals at 16K tokens would otherwise need
        b * 16K * V floats)."""
        if input_ids.ndim != 2:
            raise ValueError(f"CausalLM: input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        self._check_ids(input_ids, None)
        h = self._hidden(input_ids, None, None)
        out = torch.empty(input_ids.shape, dtype=torch.long, device=input_ids.device)
        for i in range(0, h.shape[1], chunk_size):
            out[:, i : i + chunk_size] = self.lm_head(self.norm(h[:, i : i + chunk_size])).argmax(-1)
        return out

    def _check_ids(self, input_ids: torch.Tensor, cache: ModelCache | None) -> None:
        """Refuse ids the embedding would misread: not integers, on another device, outside [0, vocab), or
        (without a cache) longer than max_seq_len. One min/max reduction (a sync) per call."""
        if input_ids.dtype not in (torch.long, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"CausalLM: input_ids must be integer token ids, got dtype {input_ids.dtype}")
        if input_ids.device != self.embed.weight.device:
            raise ValueError(f"CausalLM: input_ids are on {input_ids.device} but the model is on "
                             f"{self.embed.weight.device}; move one with .to()")
        if cache is None and input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"CausalLM: {input_ids.shape[1]} tokens exceed max_seq_len="
                             f"{self.config.max_seq_len}; shorten the input or raise max_seq_len")
        if input_ids.numel() and not torch.compiler.is_compiling():
            lo, hi = torch.aminmax(input_ids)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"CausalLM: token ids must be in [0, {self.config.vocab_size}), got "
                                 f"{lo if lo < 0 else hi}")

    def _fused_loss(self, h: torch.Tensor, labels: torch.Tensor, aux: torch.Tensor | None) -> CausalLMOutput:
        """Loss of the final hidden states h (b, t, D) without logits: position i predicts labels[i + 1]."""
        from transmamba.ops.cross_entropy import linear_cross_entropy

        shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)  # (b, t)
        hn = self.norm(h)
        loss = linear_cross_entropy(hn.reshape(-1, hn.shape[-1]), self.lm_head.weight, shifted.reshape(-1),
                                    chunk_size=self.loss_chunk_size)
        if aux is not None:
            loss = loss + aux
        return CausalLMOutput(logits=None, loss=loss, aux_loss=aux)

    def layer_modes(self, positions: list[int]) -> tuple[str, ...]:
        """A decode step's signature for rows at `positions` (host ints): per layer its kind ("attention",
        "mamba2", "mlp", ...) or, for a TransMamba layer, its `step_mode` ("attn" / "ssm" / "mixed")."""
        return tuple(block.mixer.step_mode(positions) if kind == "transmamba" else kind
                     for block, kind in zip(self.blocks, self.kinds))

    def step_constants(self) -> dict[int, dict[str, torch.Tensor]]:
        """Per layer, the keywords of its `step` that every step would otherwise recompute from the weights
        (A = -exp(A_log) of Mamba-2 / TransMamba layers, RoPE frequencies of attention layers). Made once
        per decoder, so the weights must not change while it decodes."""
        out = {}
        for i, block in enumerate(self.blocks):
            make = getattr(block.mixer, "step_constants", None)
            consts = make() if callable(make) else {}
            if consts:
                out[i] = consts
        return out

    def step(self, input_ids: torch.Tensor, cache: ModelCache, modes: tuple[str, ...] | None = None,
             consts: dict[int, dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """Decode one token per row: input_ids (b,) long -> logits (b, V); updates `cache` in place.

            h = embed(ids);  h = h + mixer_i(norm_i(h)) for each block;  logits = lm_head(norm(h))

        Each residual add is fused with the next norm (`layers.norm.add_norm`; a mixer's output projection
        may hand its split-K partial sums straight to it on CUDA), and every layer runs its own static step.

        modes: `layer_modes(positions)` for the rows' positions (host ints). With it the step has no host
        sync and launches the same kernels on the same buffers whenever the modes repeat, so it can be
        captured in a CUDA graph (`inference.static_decode.StaticDecoder`); TransMamba rows at or past their
        TransPoint must already be converted and every row needs room in the KV buffers (the decoder sees
        to both). None (eager use): the positions are read from the cache (a device sync), attention rows
        are checked for room and each TransMamba layer converts the rows that reached P
        (`TransMamba.prepare_step`), then the modes follow from the positions. consts: `step_constants()`
        (recomputed per step when None).
        """
        if input_ids.ndim != 1:
            raise ValueError(f"CausalLM.step: input_ids must be (batch,), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.device != self.embed.weight.device:
            raise ValueError(f"CausalLM.step: input_ids must be integer ids on {self.embed.weight.device}, "
                             f"got {input_ids.dtype} on {input_ids.device}")
        if len(cache) != len(self.blocks):
            raise ValueError(f"CausalLM.step: cache has {len(cache)} layers, the model {len(self.blocks)}")
        if modes is None:  # eager: the bookkeeping a decoder does on the host, here from the device
            modes = self._prepare_step(cache)
        elif len(modes) != len(self.blocks):
            raise ValueError(f"CausalLM.step: {len(modes)} modes for {len(self.blocks)} layers")
        consts = {} if consts is None else consts
        blocks = self.blocks
        h, n = embed_norm(self.embed, input_ids, blocks[0].norm)
        for i, (block, kind, state) in enumerate(zip(blocks, self.kinds, cache.states)):
            kw = consts.get(i, {})
            if kind == "transmamba":
                kw = {**kw, "mode": modes[i]}
            if kind in _STEP_PARTIAL_KINDS:  # output projections may return split-K partials (add_norm sums)
                kw = {**kw, "reduce": False}
            delta = block.mixer_step(n, state, **kw)
            h, n = add_norm(h, delta, blocks[i + 1].norm if i + 1 < len(blocks) else self.norm)
        return skinny_linear(n, self.lm_head)

    def _prepare_step(self, cache: ModelCache) -> tuple[str, ...]:
        """Eager decoding: read the rows' positions (one device sync, only with attention or TransMamba
        layers), check that every row has a free slot in each attention layer's KV buffer, let each
        TransMamba layer convert its rows that reached P (`TransMamba.prepare_step`), and return the step's
        modes (`layer_modes`)."""
        if not {"attention", "transmamba"} & set(self.kinds):
            return tuple(self.kinds)
        positions = cache.seqlen_offset.tolist()
        top = max(positions, default=0)
        for i, (kind, state) in enumerate(zip(self.kinds, cache.states)):
            if kind == "attention" and top >= state.max_len:
                raise ValueError(f"CausalLM.step: a row is at position {top} but layer {i}'s KV buffer holds "
                                 f"max_len={state.max_len} positions; make the cache with a larger max_len")
        for block, kind, state in zip(self.blocks, self.kinds, cache.states):
            if kind == "transmamba":
                block.mixer.prepare_step(state, positions)
        return self.layer_modes(positions)

    def generate(
        self,
        input_ids: torch.Tensor | list[list[int]],
        max_new_tokens: int = 32,
        *,
        attention_mask: torch.Tensor | None = None,
        do_sample: bool | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        greedy: bool | None = None,
        stop_tokens: int | list[int] | None = None,
        seed: int | None = None,
        streamer=None,
        cuda_graph: bool | str | None = "auto",
    ) -> torch.Tensor | list[list[int]]:
        """Generate up to `max_new_tokens` tokens after each prompt (Hugging Face's argument names).

        input_ids: (batch, len) long tensor, or a list of prompts of any lengths.
        attention_mask: (batch, len) 0/1 for a padded tensor batch (left or right padding): each row's
            prompt is its tokens where the mask is 1; the result is input_ids as given followed by the new
            tokens (HF's layout), and padding never enters the model.
        do_sample=False (or greedy=True): argmax decoding. Otherwise sampling with temperature, top_k,
            top_p (the default when neither is given).
        eos_token_id / stop_tokens: id(s) that end a row (kept in its output); rows that ended early are
            filled with pad_token_id (default: the first stop id, else 0).
        seed: a private RNG for sampling; streamer(tokens (b,), active (b,)) after each step; cuda_graph:
            see `transmamba.inference.generate.generate`.
        """
        from transmamba.inference.generate import generate

        stops = _merge_stop_ids(eos_token_id, stop_tokens)
        kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, do_sample=do_sample,
                  stop_tokens=stops, seed=seed, streamer=streamer, pad_token_id=pad_token_id,
                  cuda_graph=cuda_graph)
        if attention_mask is None:
            return generate(self, input_ids, max_new_tokens, **kw)
        from transmamba.inference.padding import append_new_tokens, unpad

        if not isinstance(input_ids, torch.Tensor):
            raise ValueError("generate: attention_mask needs input_ids as a (batch, len) tensor")
        prompts = unpad(input_ids, attention_mask)
        full = generate(self, prompts, max_new_tokens, **kw)
        new = [row[len(p):] for row, p in zip(full, prompts)]
        if pad_token_id is None:
            pad_token_id = stops[0] if stops else 0
        return append_new_tokens(input_ids, new, pad_token_id)

    # ---- checkpoints ---------------------------------------------------------------------------
    def _tensors_to_save(self) -> dict[str, torch.Tensor]:
        state = self.state_dict()
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)  # the same tensor as embed.weight
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def save_pretrained(
        self, directory: str | os.PathLike, *, format: str = "native", model_type: str | None = None
    ) -> Path:
        """Write config.json and model.safetensors into `directory` (created if needed), atomically.

        format="native" (default): this library's config. format="hf": a directory HF transformers loads
        (`interop/hf.py`); `model_type` picks the architecture (default: the first that fits the pattern and
        options). TransMamba (`T`) layers have no HF counterpart and keep the native format.
        """
        from safetensors.torch import save_file

        if format == "hf":
            from transmamba.interop.hf import save_hf

            return save_hf(self, directory, model_type)
        if format != "native":
            raise ValueError(f"save_pretrained: format must be 'native' or 'hf', got {format!r}")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = self._tensors_to_save()
        config_text = json.dumps(self.config.to_dict(), indent=2) + "\n"
        _atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(config_text))
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, device: str | torch.device | None = None, dtype=None
    ) -> CausalLM:
        """Load a model written by `save_pretrained`, or an HF transformers / mamba_ssm directory (detected
        from config.json; see `transmamba.interop`). Missing, unexpected or wrongly shaped tensors raise
        ValueError naming each tensor (and both shapes)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from transmamba.errors import MismatchError, UntrustedFileError
        from transmamba.interop import detect_format, load_pretrained

        src = Path(directory)
        if src.is_dir() and not (src / CONFIG_NAME).is_file():  # a `transmamba train` run folder
            from transmamba.training.checkpoint import resolve_checkpoint

            src = resolve_checkpoint(src, flag="from_pretrained:")
        if (src / CONFIG_NAME).is_file() and detect_format(src) != "native":
            model = load_pretrained(src, dtype=dtype)  # in the checkpoint's dtype unless `dtype` is given
            model = model if device is None else model.to(device=device)
            return model.eval()
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (src / name).is_file():
                raise FileNotFoundError(f"from_pretrained: {src / name} not found")
        try:
            config = ModelConfig.load(src / CONFIG_NAME)
        except (ValueError, TypeError) as err:
            raise MismatchError(f"{src / CONFIG_NAME} is not a valid model config: {err}") from None
        # Shapes first, from the safetensors header and a model on the meta device (no memory), so a config
        # asking for sizes the file does not hold fails before anything is allocated.
        weights = src / WEIGHTS_NAME
        try:
            with safe_open(str(weights), framework="pt") as f:
                got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:  # safetensors' own error type: a truncated or malformed header
            raise UntrustedFileError(f"{weights} is not a readable safetensors file ({err})") from None
        with torch.device("meta"):
            expected = cls(config)._expected_shapes()
        problems = _shape_problems(expected, got)
        if problems:
            raise MismatchError(f"{weights} does not fit this model:\n  " + "\n  ".join(problems))
        model = cls(config)
        tensors = load_file(str(weights))
        model.load_checkpoint_tensors(tensors, source=str(weights))
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()  # as Hugging Face: ready for inference; call .train() to fine-tune

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            expected.pop("lm_head.weight", None)
        return expected

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor], *, source: str = "checkpoint"):
        """Check names and shapes against this model (every problem listed), then load."""
        from transmamba.errors import MismatchError

        problems = _shape_problems(self._expected_shapes(),
                                   {k: tuple(v.shape) for k, v in tensors.items()})
        if problems:
            raise MismatchError(f"{source} does not fit this model:\n  " + "\n  ".join(problems))
        self.load_state_dict(tensors, strict=False)
