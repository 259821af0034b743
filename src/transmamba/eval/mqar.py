"""Multi-query associative recall (MQAR) exactly as Zoology defines it, and the training/eval loop around it.

Zoology (Arora, Eyuboglu et al., 2023, "Zoology: Measuring and Improving Recall in Efficient Language
Models"; HazyResearch/zoology, `zoology/data/multiquery_ar.py` and the Figure 2 sweep) is the field's
standard small-scale recall protocol. Its row of `seq_len` tokens, from a vocabulary of `vocab_size`
(8192) ids::

    k_1 v_1 k_2 v_2 ... k_n v_n | q . q . q . . . . . q . . .
    <----- context: 2n tokens -> <------ seq_len - 2n tokens ------>

* keys: n distinct ids from [1, V/2); values: n distinct ids from [V/2, V); pair i is (k_i, v_i).
* the query region holds S = (seq_len - 2n) / 2 slots at even offsets; key k_i is placed at slot g_i, the
  g_i drawn without replacement with P(g) ∝ a·g^(a-1) over g = 1..S (power law, a = power_a = 0.01,
  so queries crowd towards the start of the region); every key is queried exactly once.
* the target: at the query position the model must predict the key's value (the next token). The value
  is *not* written into the input; every other input position is 0 (or, with random_non_queries, a
  uniformly random id; Zoology's Figure 2 sweep uses 0).
* loss and accuracy only on the n answer positions (labels -100 elsewhere); accuracy is the fraction of
  answer positions whose argmax is the value (Zoology's `valid/accuracy`).

Labels here follow the `CausalLM` contract (logits at t-1 are scored against labels[t]), so the value sits
in `labels` one position after its query: ``model(ids, labels=labels).loss`` is Zoology's loss.

Zoology's Figure 2 protocol (kept as constants below): (seq_len, n_pairs) in (64, 4), (128, 8), (256, 16),
(512, 64); d_model in 64, 128, 256, 512; 2 layers (sequence mixers only, the state mixer is Identity);
learning rates logspace(-4, -2, 4), the best per point reported; AdamW (weight decay 0.1), cosine to 0;
100 000 training rows for 64 epochs with early stopping at 99 % validation accuracy; 3 000 test rows;
batch 512 (seq_len ≤ 128), 256 (256), 128 (512), 64 (1024).

Where we differ (written down in docs/reproduction.md): rows are drawn fresh every step (an unbounded
stream instead of a fixed 100 000-row set), and the step count is a budget instead of 64 epochs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from transmamba.data.synthetic import IGNORE_INDEX

ZOOLOGY_VOCAB = 8192
ZOOLOGY_POWER_A = 0.01
ZOOLOGY_SETTINGS = ((64, 4), (128, 8), (256, 16), (512, 64))  # (seq_len, n_pairs), Figure 2 panels
ZOOLOGY_WIDTHS = (64, 128, 256, 512)
ZOOLOGY_LRS = tuple(float(x) for x in np.logspace(-4, -2, 4))  # 1e-4, 4.6e-4, 2.2e-3, 1e-2
ZOOLOGY_WEIGHT_DECAY = 0.1
ZOOLOGY_TRAIN_ROWS, ZOOLOGY_EPOCHS, ZOOLOGY_TEST_ROWS = 100_000, 64, 3_000
ZOOLOGY_EARLY_STOP = 0.99

FAMILIES = ("attention", "mamba2", "hybrid", "transmamba")


def zoology_batch_size(seq_len: int) -> int:
    """Zoology's training batch size for a sequence length (512 / 256 / 128 / 64)."""
    if seq_len <= 128:
        return 512
    if seq_len <= 256:
        return 256
    if seq_len <= 512:
        return 128
    return 64


def check_mqar(seq_len: int, n_pairs: int, vocab_size: int) -> None:
    """Raise a one-line ValueError when (seq_len, n_pairs, vocab_size) cannot make a Zoology MQAR row."""
    if seq_len % 2:
        raise ValueError(f"mqar: seq_len={seq_len} must be even (queries sit at even offsets)")
    if n_pairs < 1 or 4 * n_pairs > seq_len:
        raise ValueError(f"mqar: n_pairs={n_pairs} needs 1 <= 4 * n_pairs <= seq_len={seq_len} "
                         "(2n context tokens plus n query slots of 2)")
    if vocab_size <= seq_len or vocab_size // 2 - 1 < n_pairs:
        raise ValueError(f"mqar: vocab_size={vocab_size} must exceed seq_len={seq_len} and hold "
                         f"n_pairs={n_pairs} keys in [1, vocab_size/2)")


@dataclasses.dataclass
class MQARBatch:
    """input_ids (b, t) long; labels (b, t) long: the value one position after its query, -100 elsewhere;
    answer_mask (b, t) bool: labels != -100 (n per row)."""

    input_ids: torch.Tensor
    labels: torch.Tensor

    @property
    def answer_mask(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX


def _distinct(weights_log: torch.Tensor, k: int, gen: torch.Generator | None) -> torch.Tensor:
    """k distinct indices per row, drawn without replacement with probabilities ∝ exp(weights_log) (b, m):
    the Gumbel-top-k trick, which equals sequential draws without replacement (numpy's choice(replace=False,
    p=...))."""
    u = torch.rand(weights_log.shape, generator=gen, device=weights_log.device).clamp_(1e-20, 1.0)
    return (weights_log - torch.log(-torch.log(u))).topk(k, dim=-1).indices


def zoology_mqar(
    n_rows: int,
    seq_len: int,
    n_pairs: int,
    *,
    vocab_size: int = ZOOLOGY_VOCAB,
    power_a: float = ZOOLOGY_POWER_A,
    random_non_queries: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MQARBatch:
    """`n_rows` Zoology MQAR rows (see the module docstring), drawn with torch on `device`.

    Seeded by `seed` (a fresh generator) or by `generator` (a stream; draws advance it). Same
    distribution as Zoology's generator, not the same numbers.
    """
    check_mqar(seq_len, n_pairs, vocab_size)
    if not power_a > 0:
        raise ValueError(f"mqar: power_a must be > 0, got {power_a}")
    device = torch.device(device) if device is not None else (
        generator.device if generator is not None else torch.device("cpu"))
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))
    b, n, half = n_rows, n_pairs, vocab_size // 2
    ctx = 2 * n
    space = (seq_len - ctx) // 2
    flat = torch.zeros(b, half - 1, device=device)
    keys = 1 + _distinct(flat, n, generator)  # (b, n) in [1, V/2)
    values = half + _distinct(torch.zeros(b, vocab_size - half, device=device), n, generator)  # [V/2, V)
    logp = (power_a - 1) * torch.log(torch.arange(1, space + 1, device=device, dtype=torch.float32))
    gaps = _distinct(logp.expand(b, space), n, generator)  # (b, n) slots 0..space-1
    ids = torch.zeros(b, seq_len, dtype=torch.long, device=device)
    ids[:, 0:ctx:2] = keys
    ids[:, 1:ctx:2] = values
    qpos = ctx + 2 * gaps  # (b, n) query positions
    ids.scatter_(1, qpos, keys)
    labels = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long, device=device)
    labels.scatter_(1, qpos + 1, values)
    if random_non_queries:
        filler = torch.randint(vocab_size, (b, seq_len), generator=generator, device=device)
        empty = torch.ones_like(ids, dtype=torch.bool)
        empty[:, :ctx] = False
        empty.scatter_(1, qpos, False)
        ids = torch.where(empty, filler, ids)
    return MQARBatch(ids, labels)


# ----------------------------------------------------------------------------------------------- models


@dataclasses.dataclass
class ModelSpec:
    """One model of the comparison. family: attention | mamba2 | hybrid | transmamba; transpoints: per-layer
    TransPoints as fractions of the row (TransMamba only: 1.0 = attention over the whole row, 0.0 = SSM)."""

    family: str
    d_model: int
    n_layers: int = 2
    mlp: bool = False  # Zoology's Figure 2: no state mixer (Identity); True adds a SwiGLU MLP per mixer
    n_heads: int = 1  # `*` layers (Zoology's Figure 2 attention: one head)
    qkv_bias: bool = True  # biases on q/k/v (Zoology's MHA has them; see docs/reproduction.md, Diagnosis)
    rope_theta: float = 10000.0
    d_state: int = 16
    headdim: int = 16
    ngroups: int = 1
    transpoints: tuple[float, ...] | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.family == "transmamba" and self.transpoints is not None:
            return "transmamba[" + ",".join(f"{p:g}" for p in self.transpoints) + "]"
        return self.family


def pattern_for(spec: ModelSpec) -> str:
    """The layer pattern: attention `*`*L, mamba2 `M`*L, transmamba `T`*L, hybrid: Mamba-2 layers with one
    attention layer at index L // 2 (L=2: `M*`, L=4: `MM*M`); with mlp a `-` after every mixer."""
    L = spec.n_layers
    if spec.family == "attention":
        mixers = "*" * L
    elif spec.family == "mamba2":
        mixers = "M" * L
    elif spec.family == "transmamba":
        mixers = "T" * L
    elif spec.family == "hybrid":
        if L < 2:
            raise ValueError("mqar: a hybrid needs n_layers >= 2 (one attention layer among Mamba-2 layers)")
        top = L // 2  # one attention layer: 2 layers -> M*, 4 -> MM*M
        mixers = "".join("*" if i == top else "M" for i in range(L))
    else:
        raise ValueError(f"mqar: unknown family {spec.family!r}; expected one of {FAMILIES}")
    return "".join(c + ("-" if spec.mlp else "") for c in mixers)


def resolve_points(fractions, seq_len: int) -> list[int]:
    """Per-layer TransPoints in tokens from fractions of the row (1.0 -> seq_len: attention throughout)."""
    return [int(round(float(f) * seq_len)) for f in fractions]


def build_model(spec: ModelSpec, *, vocab_size: int, seq_len: int, seed: int = 0):
    """A `CausalLM` for `spec` (fp32, CPU), initialised from torch.manual_seed(seed)."""
    from transmamba.models.config import ModelConfig
    from transmamba.models.lm import CausalLM

    n_t = spec.n_layers if spec.family == "transmamba" else 0
    points = None
    if n_t:
        fr = spec.transpoints if spec.transpoints is not None else (1.0,) * n_t
        if len(fr) != n_t:
            raise ValueError(f"mqar: {len(fr)} TransPoints for {n_t} TransMamba layers")
        points = resolve_points(fr, seq_len)
    cfg = ModelConfig(vocab_size=vocab_size, d_model=spec.d_model, pattern=pattern_for(spec),
                      n_heads=spec.n_heads, attn_qkv_bias=spec.qkv_bias, rope_theta=spec.rope_theta,
                      d_state=spec.d_state, headdim=spec.headdim, ngroups=spec.ngroups,
                      max_seq_len=max(2048, seq_len),
                      transpoints=points)
    torch.manual_seed(seed)
    return CausalLM(cfg)


def set_fractions(model, fractions, seq_len: int) -> None:
    """Swap a TransMamba model's schedule (fractions of seq_len) in place; no-op for other families."""
    if getattr(model.config, "n_transmamba", 0):
        model.set_transpoints(resolve_points(fractions, seq_len))


# ----------------------------------------------------------------------------------------------- loss


def hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Final normed hidden states (b, t, D) of a `CausalLM` (the logits are lm_head of these)."""
    from transmamba.models.pattern import MIXER_KINDS

    h = model.embed(input_ids)
    for block, kind in zip(model.blocks, model.kinds):
        h = block(h, seq_idx=None, state=None) if kind in MIXER_KINDS else block(h)
    return model.norm(h)


def answer_logits(model, batch: MQARBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (m, V), targets (m,)) at the m answer positions of the batch only (the lm_head over all
    positions would be a (b, t, 8192) tensor for nothing). Position t-1 predicts labels[t]."""
    h = hidden_states(model, batch.input_ids)  # (b, t, D)
    tgt = batch.labels[:, 1:]  # (b, t-1)
    sel = tgt != IGNORE_INDEX
    logits = model.lm_head(h[:, :-1][sel])  # (m, V)
    return logits, tgt[sel]


@torch.no_grad()
def evaluate(model, batches, *, autocast_dtype: torch.dtype | None = None) -> dict:
    """Zoology's accuracy (answer positions whose argmax is the value) and mean loss over `batches`."""
    was = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    try:
        for batch in batches:
            with _autocast(batch.input_ids.device, autocast_dtype):
                logits, tgt = answer_logits(model, batch)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, tgt, reduction="sum"))
            correct += int((logits.argmax(-1) == tgt).sum())
            total += int(tgt.numel())
    finally:
        model.train(was)
    return {"accuracy": correct / max(1, total), "loss": loss_sum / max(1, total), "n_answers": total}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def test_batches(n_rows: int, seq_len: int, n_pairs: int, *, vocab_size: int = ZOOLOGY_VOCAB,
                 seed: int = 10_000, batch_size: int = 500, device=None, **kw) -> list[MQARBatch]:
    """A fixed, seeded test set (Zoology: 3 000 rows) in batches of `batch_size` rows."""
    gen = torch.Generator(device=device or "cpu")
    gen.manual_seed(seed)
    out = []
    for i in range(0, n_rows, batch_size):
        out.append(zoology_mqar(min(batch_size, n_rows - i), seq_len, n_pairs, vocab_size=vocab_size,
                                generator=gen, device=device, **kw))
    return out


@dataclasses.dataclass
class TrainResult:
    steps: int
    seconds: float
    train_accuracy: float  # over the last 5 training batches before the final log point
    train_loss: float
    stopped_early: bool
    curve: list[dict]


def mqar_stream(seq_len: int, n_pairs: int, batch_size: int, *, vocab_size: int = ZOOLOGY_VOCAB,
                device=None, **kw) -> Callable[[torch.Generator], MQARBatch]:
    """A batch maker for :func:`train`: fresh Zoology MQAR rows from the generator it is handed."""
    check_mqar(seq_len, n_pairs, vocab_size)

    def make(gen: torch.Generator) -> MQARBatch:
        return zoology_mqar(batch_size, seq_len, n_pairs, vocab_size=vocab_size, generator=gen,
                            device=device, **kw)

    return make


def train(
    model,
    make_batch: Callable[[torch.Generator], MQARBatch],
    *,
    steps: int,
    lr: float,
    weight_decay: float = ZOOLOGY_WEIGHT_DECAY,
    seed: int = 0,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    log_every: int = 50,
    early_stop: float | None = ZOOLOGY_EARLY_STOP,
    time_limit_s: float | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model` on `make_batch(generator)` batches (anything with input_ids and CausalLM-style labels,
    e.g. :func:`mqar_stream` or a PhoneBook `SyntheticBatch`): AdamW(lr, weight_decay on every parameter,
    as Zoology), cosine from lr to 0 over `steps`, no warmup, no clipping (Zoology's loop), loss on the
    labelled positions only.

    Stops early when the accuracy over the last 5 training batches before a log point exceeds `early_stop`
    (Zoology stops at 99 % validation accuracy; fresh rows make training accuracy a held-out measure),
    or when `time_limit_s` has passed.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(1_000_003 * (seed + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    t0 = time.perf_counter()
    curve: list[dict] = []
    acc_c = acc_n = 0
    loss_acc = 0.0
    n_loss = 0
    stopped = False
    step = 0
    last = {"accuracy": 0.0, "loss": float("nan")}
    for step in range(1, steps + 1):
        batch = make_batch(gen)
        with _autocast(device, autocast_dtype):
            logits, tgt = answer_logits(model, batch)
            loss = F.cross_entropy(logits.float(), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log_now = step % log_every == 0 or step == steps
        if log_now or step % log_every > log_every - 5:  # the last 5 batches before a log point
            acc_c += int((logits.detach().argmax(-1) == tgt).sum())
            acc_n += int(tgt.numel())
            loss_acc += float(loss.detach())
            n_loss += 1
        if log_now:
            last = {"step": step, "accuracy": acc_c / max(1, acc_n), "loss": loss_acc / max(1, n_loss),
                    "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0}
            curve.append(last)
            if on_log:
                on_log(last)
            acc_c = acc_n = n_loss = 0
            loss_acc = 0.0
            if early_stop is not None and last["accuracy"] > early_stop:
                stopped = True
                break
            if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
                break
    return TrainResult(step, time.perf_counter() - t0, last["accuracy"], last["loss"], stopped, curve)


def zoology_pairs(seq_len: int) -> int:
    """Zoology's number of pairs for a Figure 2 sequence length (64: 4, 128: 8, 256: 16, 512: 64); other
    lengths: seq_len / 8 (512's ratio), at least 1."""
    return dict(ZOOLOGY_SETTINGS).get(seq_len, max(1, seq_len // 8))


def evaluate_lengths(model, lengths, *, n_pairs: int | None = None, n_rows: int = ZOOLOGY_TEST_ROWS,
                     seed: int = 1234, batch_size: int = 250, vocab_size: int | None = None,
                     power_a: float = ZOOLOGY_POWER_A, random_non_queries: bool = False) -> list[dict]:
    """Zoology MQAR accuracy of a trained `CausalLM` at each sequence length (fresh seeded rows; pairs
    from :func:`zoology_pairs` unless `n_pairs`). One dict per length: length, n_pairs, accuracy, loss,
    n_answers, chance (1 / number of values)."""
    vocab = int(vocab_size or model.config.vocab_size)
    device = next(model.parameters()).device
    rows = []
    for i, length in enumerate(lengths):
        n = n_pairs or zoology_pairs(int(length))
        tests = test_batches(n_rows, int(length), n, vocab_size=vocab, seed=seed + i, batch_size=batch_size,
                             device=device, power_a=power_a, random_non_queries=random_non_queries)
        res = evaluate(model, tests)
        rows.append({"length": int(length), "n_pairs": n, **res, "chance": 1 / (vocab - vocab // 2)})
    return rows
