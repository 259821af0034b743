"""Autoregressive generation: prefill the prompts, then decode one token per row per step.

    out = generate(model, [[5, 6, 7], [8, 9]], max_new_tokens=20, top_p=0.9, seed=0, stop_tokens=[0])

1. Prefill. Prompts of equal length are prefilled together in one forward pass over a fresh cache;
   prompts of different lengths are grouped by length, each group prefilled on its own cache, and the
   per-layer states are merged with `LayerState.stack` (`ModelCache.stack`). Every row keeps its own
   position (`seqlen_offset`), so attention RoPE, KV masks and TransMamba's TransPoints stay per row.
2. Decode. Each step samples one token per row from the last logits (`inference/sampling.py`) and feeds
   it through the model: `model.step`, or with `cuda_graph` the static step replayed from CUDA graphs
   (`inference/static_decode.py`; same logits up to rounding, sampling stays outside the graph). A row
   that emits a stop token is finished: it keeps the stop token, gets `pad_token_id` afterwards, and the
   loop ends when every row has finished or after `max_new_tokens`.

The streamer, if given, is called after every step as `streamer(tokens, active)`: tokens (b,) long are
this step's tokens in the caller's row order, active (b,) bool says which rows produced a real token.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from transmamba.inference.cache import ModelCache
from transmamba.inference.sampling import check_sampling_args, make_generator, sample_next
from transmamba.inference.static_decode import StaticDecoder, graph_supported

Streamer = Callable[[torch.Tensor, torch.Tensor], None]
GRAPH_MIN_TOKENS = 8  # cuda_graph="auto": shorter runs do not repay a capture
GRAPH_CHOICES = {"auto": None, "on": True, "off": False, None: None, True: True, False: False}


def _as_prompts(input_ids) -> tuple[list[list[int]], bool]:
    """-> (list of prompts as int lists, whether the input was a tensor)."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.ndim != 2:
            raise ValueError(f"generate: input_ids must be (batch, len), got shape {tuple(input_ids.shape)}")
        return input_ids.tolist(), True
    prompts = [list(map(int, p)) for p in input_ids]
    if not prompts:
        raise ValueError("generate: no prompts given")
    return prompts, False


def _check_lengths(model, prompts: list[list[int]], max_new_tokens: int) -> None:
    """The KV caches are sized prompt + max_new_tokens: refuse, up front and in one line, a total past the
    model's max_seq_len (a huge --max-new-tokens would otherwise allocate or run unbounded), and ids the
    embedding cannot read."""
    cfg = getattr(model, "config", None)
    limit, vocab = getattr(cfg, "max_seq_len", None), getattr(cfg, "vocab_size", None)
    longest = max(len(p) for p in prompts)
    if limit is not None and longest + max_new_tokens > limit:
        room = limit - longest
        fix = f"use max_new_tokens <= {room}" if room > 0 else "shorten the prompt"
        raise ValueError(f"generate: longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"exceeds the model's max_seq_len={limit}; {fix}")
    if vocab is not None:
        bad = [t for p in prompts for t in p if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"generate: token id {bad[0]} is outside the vocabulary [0, {vocab})")


def _resolve_greedy(greedy: bool | None, do_sample: bool | None) -> bool:
    if greedy is not None and do_sample is not None and greedy == do_sample:
        raise ValueError(f"generate: greedy={greedy} contradicts do_sample={do_sample}")
    if greedy is not None:
        return bool(greedy)
    if do_sample is not None:
        return not do_sample
    return False


def _resolve_graph(model, cuda_graph, max_new_tokens: int) -> bool:
    """Whether to decode through CUDA graphs (see `generate`'s cuda_graph)."""
    if not isinstance(cuda_graph, (bool, str, type(None))) or cuda_graph not in GRAPH_CHOICES:
        raise ValueError(f"generate: cuda_graph must be 'auto', 'on', 'off', True, False or None, "
                         f"got {cuda_graph!r}")
    choice = GRAPH_CHOICES[cuda_graph]
    ok, why = graph_supported(model)
    if choice is None:  # auto
        if not ok and model.device.type == "cuda":
            warnings.warn(f"generate: decoding without CUDA graphs: {why}", RuntimeWarning, stacklevel=3)
        return ok and max_new_tokens >= GRAPH_MIN_TOKENS
    if choice and not ok:
        raise ValueError(f"generate: cuda_graph=True is not possible: {why}")
    return choice


@torch.no_grad()
def prefill(model, prompts: list[list[int]], max_len: int) -> tuple[ModelCache, torch.Tensor, list[int]]:
    """Prefill prompts (grouped by length) -> (cache, last logits (b, V), order).

    Row r of the cache and logits holds prompt `order[r]`.
    """
    device = model.device
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty; give at least one token (e.g. a BOS id)")
        groups.setdefault(len(p), []).append(i)
    caches, logits, order = [], [], []
    for rows in groups.values():
        ids = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
        cache = model.init_cache(len(rows), max_len)
        out = model(ids, cache=cache, last_logits_only=True)
        caches.append(cache)
        logits.append(out.logits[:, -1].float())
        order.extend(rows)
    cache = caches[0] if len(caches) == 1 else ModelCache.stack(caches)
    return cache, torch.cat(logits, dim=0), order


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool | None = None,
    do_sample: bool | None = None,
    stop_tokens: Sequence[int] | int | None = None,
    seed: int | None = None,
    streamer: Streamer | None = None,
    pad_token_id: int | None = None,
    cuda_graph: bool | str | None = "auto",
) -> torch.Tensor | list[list[int]]:
    """Generate up to `max_new_tokens` tokens after each prompt.

    input_ids: a (batch, len) long tensor, or a list of prompts (lists of ids, lengths may differ).
    greedy / do_sample: argmax decoding (greedy=True or do_sample=False); default is sampling.
    temperature, top_k, top_p: sampling filters (`inference/sampling.py`).
    stop_tokens: ids that end a row (kept in its output).
    seed: seeds a private torch.Generator (None: the global RNG).
    pad_token_id: fills finished rows in a tensor result (default: the first stop token, else 0).
    cuda_graph: decode through CUDA graphs of the static step. "auto" (default; also None): on a CUDA
        device when `graph_supported(model)` and max_new_tokens >= GRAPH_MIN_TOKENS; a CUDA model that
        cannot be captured (MoE layers) decodes eagerly with a one-line RuntimeWarning; CPU models decode
        eagerly without one. "on" / True: required, a ValueError where impossible. "off" / False:
        `model.step`. A capture that fails at run time warns and goes on eagerly (`StaticDecoder`).

    Returns, for tensor input, a (batch, len + n) tensor (prompt then new tokens, finished rows padded);
    for list input, a list of lists (each prompt followed by its new tokens, up to and including a stop).
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    use_greedy = _resolve_greedy(greedy, do_sample)
    if not use_greedy:
        check_sampling_args(temperature, top_k, top_p)
    prompts, was_tensor = _as_prompts(input_ids)
    _check_lengths(model, prompts, max_new_tokens)
    if isinstance(stop_tokens, int):
        stop_tokens = [stop_tokens]
    stops = torch.tensor(sorted(set(stop_tokens or [])), dtype=torch.long)
    if pad_token_id is None:
        pad_token_id = int(stops[0]) if stops.numel() else 0

    use_graph = _resolve_graph(model, cuda_graph, max_new_tokens)

    was_training = model.training
    model.eval()
    try:
        new_tokens = _decode(model, prompts, max_new_tokens, use_greedy, temperature, top_k, top_p, stops,
                             seed, streamer, pad_token_id, use_graph)
    finally:
        model.train(was_training)

    if was_tensor:
        width = max(len(t) for t in new_tokens) if new_tokens else 0
        rows = [p + t + [pad_token_id] * (width - len(t)) for p, t in zip(prompts, new_tokens)]
        return torch.tensor(rows, dtype=torch.long, device=input_ids.device)
    return [p + t for p, t in zip(prompts, new_tokens)]


def _decode(model, prompts, max_new_tokens, greedy, temperature, top_k, top_p, stops, seed, streamer, pad,
            use_graph=False):
    b = len(prompts)
    new_tokens: list[list[int]] = [[] for _ in range(b)]
    if max_new_tokens == 0:
        return new_tokens
    max_len = max(len(p) for p in prompts) + max_new_tokens
    cache, logits, order = prefill(model, prompts, max_len)
    device = logits.device
    order_t = torch.tensor(order, dtype=torch.long, device=device)
    stops = stops.to(device)
    generator = make_generator(seed, device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)  # in cache row order
    if use_graph:
        step_fn = StaticDecoder(model, cache, cuda_graph=True).step
    else:
        step_fn = lambda t: model.step(t, cache)  # noqa: E731
    for step in range(max_new_tokens):
        nxt = sample_next(logits, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                          generator=generator)
        active = ~finished
        nxt = torch.where(active, nxt, torch.full_like(nxt, pad))
        for r, (tok, live) in enumerate(zip(nxt.tolist(), active.tolist())):  # one sync per step
            if live:
                new_tokens[order[r]].append(tok)
        if streamer is not None:
            tokens_caller = torch.empty_like(nxt).index_copy_(0, order_t, nxt)
            active_caller = torch.empty_like(active).index_copy_(0, order_t, active)
            streamer(tokens_caller, active_caller)
        if stops.numel():
            finished |= active & torch.isin(nxt, stops)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        logits = step_fn(nxt).float()
    return new_tokens
