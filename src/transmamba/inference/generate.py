"""Autoregressive generation: prefill the prompts, then decode one token per row per step.

    out = generate(model, [[5, 6, 7], [8, 9]], max_new_tokens=20, top_p=0.9, seed=0, stop_tokens=[0])

1. Prefill. Prompts of equal length are prefilled together in one forward pass over a fresh cache;
   prompts of different lengths are grouped by length, each group prefilled on its own cache, and the
   per-layer states are merged with `LayerState.stack` (`ModelCache.stack`). Every row keeps its own
   position (`seqlen_offset`), so attention RoPE, KV masks and TransMamba's TransPoints stay per row.
2. Decode. Each step samples one token per row from the last logits (`inference/sampling.py`) and feeds
   it through the model: `model.step`, eagerly or with `cuda_graph` captured in CUDA graphs and replayed
   (`inference/static_decode.py`). Without a streamer or on_step, the sampling and the token bookkeeping
   are captured in the same graph as the step, so a decode token is one graph replay. A row
   that emits a stop token is finished: it keeps the stop token, gets `pad_token_id` afterwards, and the
   loop ends when every row has finished or after `max_new_tokens`. The loop stays on the device (no host
   sync per token): tokens and stop flags live in device buffers read back at the end, "has every row
   finished?" is asked every STOP_CHECK_EVERY tokens (every token with a streamer).

The streamer, if given, is called after every step as `streamer(tokens, active)`: tokens (b,) long are
this step's tokens in the caller's row order, active (b,) bool says which rows produced a real token.
`on_step(cache)`, if given, sees the decode cache after the prefill and after every decode step (e.g. to
watch its memory, `cache.layer_nbytes()`, and the TransMamba layers' conversions; `transmamba demo` does).
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence

import torch

from transmamba.inference.cache import ModelCache
from transmamba.inference.sampling import check_sampling_args, make_generator, sample_next
from transmamba.inference.static_decode import StaticDecoder, graph_supported

Streamer = Callable[[torch.Tensor, torch.Tensor], None]
CacheObserver = Callable[[ModelCache], None]
GRAPH_MIN_TOKENS = 8  # cuda_graph="auto": shorter runs do not repay a capture
STOP_CHECK_EVERY = 16  # without a streamer: tokens between two host reads of "has every row stopped?"
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


# ---- a decode workspace kept between calls -----------------------------------------------------------------
# CUDA graphs read fixed addresses, so a graph captured for one call's cache is useless to the next call,
# which makes its own cache: every call paid an eager step and a capture per TransPoint signature (about two
# eager steps of host time; transmamba-400m's eager step takes 7.6 ms on the H200, against ~0.1 s for
# 128 tokens at batch 16). Calls whose prompts all have one length keep one workspace per model instead —
# the cache buffers and the decoder with its graphs, as mamba_ssm's generation keeps its graph cache on the
# model — keyed by what the graphs bake in (batch, max_len, dtype, device, TransPoints, the weights'
# addresses) and by whether inference mode is on. A later call with the same key prefills into the same
# buffers and replays the same graphs. The workspace holds its cache's memory between calls (a later call
# with another key replaces it); `release_decode_workspace(model)` frees it.
_WORKSPACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Workspace
_WORKSPACE_ON_CPU = False  # tests: the workspace path (StaticDecoder, no graphs) on CPU models too
_KV_FIELDS = ("kv_B", "kv_x", "kv_dt")


@dataclasses.dataclass(eq=False)
class _Workspace:
    key: tuple
    cache: ModelCache
    decoder: StaticDecoder | None = None
    kv: dict[int, tuple] = dataclasses.field(default_factory=dict)  # TransMamba KV buffers, by layer
    loop: _Loop | None = None  # the decode loop's buffers, captured in the decoder's graphs as its tail
    loop_key: tuple | None = None  # the sampling settings the loop (and so the decoder) was made for
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)  # held by the call using it

    def refill(self) -> None:
        """Every row back to position 0 for a new prefill into the same buffers: offsets, conv and SSM
        states zeroed, TransMamba rows unconverted (P > 0) with their KV buffers back (a prefill drops them
        when every row converts). Attention / TransMamba KV contents stay: only positions a row has
        written are ever read."""
        for i, s in enumerate(self.cache.states):
            if s is None:
                continue
            for f in dataclasses.fields(s):
                t = getattr(s, f.name)
                if isinstance(t, torch.Tensor) and f.name not in ("k", "v", *_KV_FIELDS, "converted"):
                    t.zero_()
            if i in self.kv:
                s.kv_B, s.kv_x, s.kv_dt = self.kv[i]
            if hasattr(s, "converted"):
                s.converted.fill_(s.transpoint == 0)


def _workspace_key(model, batch: int, max_len: int) -> tuple:
    # inference mode too: tensors made under torch.inference_mode() cannot be updated in place outside it
    return (batch, max_len, model.dtype, str(model.device), torch.is_inference_mode_enabled(),
            tuple(layer.transpoint for layer in model.transmamba_layers()),
            tuple(p.data_ptr() for p in model.parameters()))


def release_decode_workspace(model) -> None:
    """Free the decode cache and CUDA graphs `generate` keeps for `model` between calls (if any)."""
    _WORKSPACES.pop(model, None)


def _workspace(model, batch: int, max_len: int) -> _Workspace | None:
    """The model's workspace for this key, refilled; a new one (the old one freed first) otherwise; None
    while another thread's call is using the model's workspace (that call then decodes on its own cache).
    The returned workspace is locked: release `ws.lock` when done."""
    key = _workspace_key(model, batch, max_len)
    ws = _WORKSPACES.get(model)
    if ws is not None:
        if not ws.lock.acquire(blocking=False):
            return None
        if ws.key == key and ws.decoder is not None and ws.decoder.capture_error is None:
            ws.refill()
            return ws
        release_decode_workspace(model)
        ws.lock.release()
    cache = model.init_cache(batch, max_len)
    kv = {i: tuple(getattr(s, n) for n in _KV_FIELDS) for i, s in enumerate(cache.states)
          if getattr(s, "kv_B", None) is not None}
    ws = _Workspace(key=key, cache=cache, kv=kv)
    ws.lock.acquire()
    _WORKSPACES[model] = ws
    return ws


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
    on_step: CacheObserver | None = None,
) -> torch.Tensor | list[list[int]]:
    """Generate up to `max_new_tokens` tokens after each prompt.

    input_ids: a (batch, len) long tensor, or a list of prompts (lists of ids, lengths may differ).
    greedy / do_sample: argmax decoding (greedy=True or do_sample=False); default is sampling.
    temperature, top_k, top_p: sampling filters (`inference/sampling.py`).
    stop_tokens: ids that end a row (kept in its output).
    seed: seeds a private torch.Generator (None: the global RNG).
    pad_token_id: fills finished rows in a tensor result (default: the first stop token, else 0).
    cuda_graph: decode through CUDA graphs of `model.step`. "auto" (default; also None): on a CUDA
        device when `graph_supported(model)` and max_new_tokens >= GRAPH_MIN_TOKENS; a CUDA model that
        cannot be captured (MoE layers) decodes eagerly with a one-line RuntimeWarning; CPU models decode
        eagerly without one. "on" / True: required, a ValueError where impossible. "off" / False:
        `model.step`. A capture that fails at run time warns and goes on eagerly (`StaticDecoder`).
    on_step: called as on_step(cache) after the prefill and after every decode step (rows in the cache's
        order: prompts grouped by length); read-only use. Like a streamer, it keeps steps one at a time.

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
                             seed, streamer, pad_token_id, use_graph, on_step)
    finally:
        model.train(was_training)

    if was_tensor:
        width = max(len(t) for t in new_tokens) if new_tokens else 0
        rows = [p + t + [pad_token_id] * (width - len(t)) for p, t in zip(prompts, new_tokens)]
        return torch.tensor(rows, dtype=torch.long, device=input_ids.device)
    return [p + t for p, t in zip(prompts, new_tokens)]


def _decode(model, prompts, max_new_tokens, greedy, temperature, top_k, top_p, stops, seed, streamer, pad,
            use_graph=False, on_step=None):
    """The decode loop, kept on the device: tokens go into a (b, max_new_tokens) buffer, stop tokens set a
    device flag per row, and the host reads them back once at the end. Without a streamer the loop asks
    whether every row has finished only every STOP_CHECK_EVERY tokens (steps past that point produce
    padding, which is dropped: the result is the same as checking every step); with one it checks every
    step, as the streamer sees every token anyway. With CUDA graphs each step is one replay of the
    captured `model.step`; sampling runs outside the graph, on the device."""
    b = len(prompts)
    new_tokens: list[list[int]] = [[] for _ in range(b)]
    if max_new_tokens == 0:
        return new_tokens
    max_len = max(len(p) for p in prompts) + max_new_tokens
    ws = None
    if (use_graph or _WORKSPACE_ON_CPU) and len({len(p) for p in prompts}) == 1:  # one prefill group
        ws = _workspace(model, b, max_len)
    if ws is None:
        return _decode_on(model, prompts, max_new_tokens, greedy, temperature, top_k, top_p, stops, seed,
                          streamer, pad, use_graph, None, on_step)
    try:
        return _decode_on(model, prompts, max_new_tokens, greedy, temperature, top_k, top_p, stops, seed,
                          streamer, pad, use_graph, ws, on_step)
    finally:
        ws.lock.release()


class _Loop:
    """The device-side state of one decode loop, in cache row order, and its per-token work (`__call__`):
    tokens (b, width) long, padding where a row had finished; col (1,) the next column; finished (b,) bool.
    Every tensor keeps its address for the loop's life, so `__call__` can be captured in the step's CUDA
    graph (`StaticDecoder(tail=...)`) and a workspace can keep the loop for later calls (`restart`)."""

    def __init__(self, b: int, width: int, device, greedy: bool, temperature: float, top_k, top_p,
                 stops: torch.Tensor, pad: int, seed: int | None):
        self.greedy, self.temperature, self.top_k, self.top_p = greedy, temperature, top_k, top_p
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)
        self.tokens = torch.full((b, width), pad, dtype=torch.long, device=device)
        self.col = torch.zeros(1, dtype=torch.long, device=device)
        self.pad_t = torch.full((b,), pad, dtype=torch.long, device=device)
        self.stops = stops.to(device)
        self.pad = pad
        self.generator = make_generator(0 if seed is not None else None, device)
        self.generators = () if self.generator is None else (self.generator,)  # for a graph to register
        self.streamer: Streamer | None = None
        self.order_t: torch.Tensor | None = None

    def restart(self, seed: int | None, streamer: Streamer | None, order_t: torch.Tensor) -> None:
        self.tokens.fill_(self.pad)
        self.finished.zero_()
        self.col.zero_()
        if self.generator is not None:
            self.generator.manual_seed(int(seed))
        self.streamer, self.order_t = streamer, order_t

    def __call__(self, step_logits: torch.Tensor) -> torch.Tensor:
        """Sample the next token of every row from logits (b, V), record it (padding for finished rows) and
        update the finished flags; device work only. -> the tokens to feed the model (b,)."""
        nxt = sample_next(step_logits.float(), greedy=self.greedy, temperature=self.temperature,
                          top_k=self.top_k, top_p=self.top_p, generator=self.generator)
        active = ~self.finished
        nxt = torch.where(active, nxt, self.pad_t)
        self.tokens.index_copy_(1, self.col, nxt[:, None])
        self.col.add_(1)
        if self.stops.numel():
            self.finished.logical_or_(active & (nxt[:, None] == self.stops).any(-1))  # (b, n_stops) compare
        if self.streamer is not None:
            order_t = self.order_t
            self.streamer(torch.empty_like(nxt).index_copy_(0, order_t, nxt),
                          torch.empty_like(active).index_copy_(0, order_t, active))
        return nxt


def _decode_on(model, prompts, max_new_tokens, greedy, temperature, top_k, top_p, stops, seed, streamer, pad,
               use_graph, ws, on_step=None):
    """`_decode` on the workspace `ws` (its cache and decoder), or on a fresh cache when ws is None.

    Without a streamer or on_step, the per-token work (`_Loop.__call__`: sampling, recording, stop flags)
    is the decoder's tail, captured with the step in one CUDA graph: a token is one replay. The workspace
    keeps the loop and its decoder for later calls with the same sampling settings."""
    b = len(prompts)
    new_tokens: list[list[int]] = [[] for _ in range(b)]
    max_len = max(len(p) for p in prompts) + max_new_tokens
    if ws is not None:
        cache, order = ws.cache, list(range(b))
        ids = torch.tensor(prompts, dtype=torch.long, device=model.device)
        logits = model(ids, cache=cache, last_logits_only=True).logits[:, -1].float()
    else:
        cache, logits, order = prefill(model, prompts, max_len)
    if on_step is not None:
        on_step(cache)
    device = logits.device
    order_t = torch.tensor(order, dtype=torch.long, device=device)
    # the loop's work as the decoder's tail (in its graphs; a CPU workspace runs the same path eagerly)
    as_tail = (use_graph or ws is not None) and streamer is None and on_step is None
    loop_key = (greedy, temperature, top_k, top_p, tuple(stops.tolist()), pad, seed is not None, as_tail)
    if ws is not None and ws.loop is not None and ws.loop_key == loop_key:
        loop = ws.loop
    else:
        # width max_len, not max_new_tokens: a workspace's later call may ask for more new tokens
        loop = _Loop(b, max_len, device, greedy, temperature, top_k, top_p, stops, pad, seed)
        if ws is not None:  # a decoder whose graphs hold another loop's buffers cannot serve this one
            ws.loop, ws.loop_key, ws.decoder = loop, loop_key, None
    loop.restart(seed, streamer, order_t)
    tail = loop if as_tail else None

    if ws is not None:
        if ws.decoder is None:
            ws.decoder = StaticDecoder(model, cache, cuda_graph=use_graph, keep_graphs=True, tail=tail)
        else:
            ws.decoder.reset()
        dec = ws.decoder
    else:
        dec = StaticDecoder(model, cache, cuda_graph=True, tail=tail) if use_graph else None
    check_every = 1 if streamer is not None else STOP_CHECK_EVERY
    nxt = loop(logits)
    made, checked = 1, 0
    while made < max_new_tokens:
        if loop.stops.numel() and made - checked >= check_every:
            checked = made
            if bool(loop.finished.all()):
                break
        if tail is not None:
            nxt = dec.step(nxt)  # step + loop in one replay
        else:
            step_logits = dec.step(nxt) if dec is not None else model.step(nxt, cache)
            if on_step is not None:
                on_step(cache)
            nxt = loop(step_logits)
        made += 1
    rows = loop.tokens[:, :made].tolist()  # the one read-back of the tokens
    stop_set = set(stops.tolist())
    for r, row in enumerate(rows):
        end = next((i + 1 for i, t in enumerate(row) if t in stop_set), len(row))
        new_tokens[order[r]] = row[:end]
    return new_tokens
