"""Decode loop driver for the model's own static step, `model.step(ids, cache, modes, consts)`, optionally
captured in CUDA graphs and replayed (as mamba_ssm's generation captures its model's step).

    dec = StaticDecoder(model, cache, cuda_graph=True)   # cache: prefilled, KV buffers sized for the run
    logits = dec.step(ids)                               # (b,) long -> (b, V), like model.step(ids, cache)

    dec = StaticDecoder(model, cache, cuda_graph=True, tail=advance)
    ids = dec.step(ids)                                  # (b,) long -> advance(logits) (b,) long

`tail` (optional) is device work on the step's logits that every step does next, e.g. `generate`'s
sampling and bookkeeping of the new token: logits (b, V) -> next ids (b,) long. It is captured in the same
CUDA graph as the step, so a decode token is one replay with no launches between the step and the
sampling; it must touch only tensors that keep their addresses (static buffers) and may draw random
numbers only from the default CUDA generator or a generator it registers (`tail.generators`, see
`_capture_and_run`). With a tail, `step` returns the tail's ids in a buffer that the next replay
overwrites; passing that buffer back as the next ids costs no copy.

The decoder does the cache bookkeeping that keeps the step static. It keeps the rows' positions on the host
(read once at construction, +1 per step), so it knows without a device sync, before every step:
- which TransMamba rows reach their TransPoint P: it runs the Memory Converter for them outside the step
  (`TransMamba.convert_rows`), and frees a layer's KV cache once every row is converted;
- the step's mode signature (`model.layer_modes`): which TransMamba layers are in attention, SSM or
  mixed mode. A layer only moves attn -> mixed -> ssm, so a run sees at most 2 x (TransMamba layers) + 1
  signatures, and a signature never comes back once left.
- that every attention row, and every TransMamba row before its P, still fits its preallocated KV buffer (a
  clear error instead of an out-of-bounds write).

With `cuda_graph=True` a new signature's first step runs eagerly (on the capture stream: it doubles as the
warm-up that compiles kernels and initialises cuBLAS); if the next step has the same signature it is
captured into a CUDA graph and every later step with that signature is one `graph.replay()`. Only the
current signature's graph is kept (the old one can never be replayed again) and each graph has its own
memory pool (freed with the graph). The returned logits of a replay live in the graph's output buffer:
use them before the next step. If a capture fails, the decoder warns, records `capture_error`, puts the
default CUDA generator back to its state before the capture and goes on with the step run eagerly.
The weights must not change while a decoder is in use (it reads `model.step_constants()`, A = -exp(A_log) and
RoPE's frequencies, once, and graphs hold the weights' addresses). `model` is anything with CausalLM's
decode interface (`blocks`, `kinds`, `mixer(i)`, `device`, `step`, `layer_modes`, `step_constants`); this
package never imports `transmamba.models`.
"""

from __future__ import annotations

import warnings
import weakref

import torch

UNSUPPORTED_GRAPH_KINDS = ("moe",)  # routing with data-dependent shapes (nonzero); the step runs eagerly


def graph_supported(model) -> tuple[bool, str]:
    """(True, "") when `model` can decode through CUDA graphs, else (False, why)."""
    if model.device.type != "cuda":
        return False, f"the model is on {model.device}, CUDA graphs need a CUDA device"
    bad = sorted(set(model.kinds) & set(UNSUPPORTED_GRAPH_KINDS))
    if bad:
        return False, f"layer kinds {bad} have data-dependent shapes and cannot be captured"
    return True, ""


class StaticDecoder:
    """See the module docstring. `model.step`'s contract: step(ids (b,) long) -> logits (b, V)."""

    def __init__(self, model, cache, *, cuda_graph: bool = False, keep_graphs: bool = False,
                 tail=None):
        if cuda_graph:
            ok, why = graph_supported(model)
            if not ok:
                raise ValueError(f"StaticDecoder: cuda_graph=True is not possible: {why}")
        if len(cache) != len(model.blocks):
            raise ValueError(f"StaticDecoder: cache has {len(cache)} layers, the model {len(model.blocks)}")
        # a weak reference: `generate` keeps decoders in a per-model WeakKeyDictionary, whose values must not
        # keep their model (and so themselves) alive
        self._model_ref = weakref.ref(model)
        self.cache, self.cuda_graph = cache, bool(cuda_graph)
        # keep_graphs: graphs of earlier signatures are kept (not freed), and the fully converted layers'
        # KV buffers too, so that a later run over the same cache buffers (`reset`) replays them
        self.keep_graphs = bool(keep_graphs)
        self.saved_graphs: dict[tuple, tuple] = {}  # signature -> (graph, its output buffer)
        self.tail = tail  # logits (b, V) -> ids (b,), run (and captured) after every step
        self._read_rows()
        self.consts = model.step_constants()  # A = -exp(A_log), RoPE frequencies: read from the weights once
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_modes: tuple | None = None
        self.eager_modes: tuple | None = None  # signature of the last eager step (captured if seen again)
        self.captures = 0
        self.capture_error: str | None = None  # set (and graphs turned off) if a capture fails
        self._stream = None
        self._ids = None
        self._logits = None  # the graph's output: logits, or the tail's ids

    @property
    def model(self):
        model = self._model_ref()
        if model is None:
            raise ReferenceError("StaticDecoder: its model has been freed")
        return model

    @property
    def batch_size(self) -> int:
        return len(self.positions)

    def _read_rows(self) -> None:
        """Positions and converted flags of the rows, read from the cache (one device sync)."""
        self.positions: list[int] = [int(p) for p in self.cache.seqlen_offset.tolist()]
        self.converted: dict[int, list[bool]] = {}
        for i, (kind, state) in enumerate(zip(self.model.kinds, self.cache.states)):
            if kind == "transmamba":
                if state.transpoint != self.model.mixer(i).transpoint:
                    raise ValueError(f"StaticDecoder: layer {i}'s state was made for transpoint "
                                     f"{state.transpoint}, the layer has {self.model.mixer(i).transpoint}")
                self.converted[i] = [bool(c) for c in state.converted.tolist()]

    @torch.no_grad()
    def reset(self) -> None:
        """Start a new run on the same cache buffers, refilled in place by a new prefill (rows at new
        positions): re-read the rows, refresh the step constants in place (the weights may have been updated
        in place) and keep the captured graphs (with keep_graphs), which read the same buffers."""
        if self.graph is not None and self.keep_graphs:
            self.saved_graphs[self.graph_modes] = (self.graph, self._logits)
        self.graph = self.graph_modes = self.eager_modes = None
        self._read_rows()
        for i, fresh in self.model.step_constants().items():
            for name, t in fresh.items():
                self.consts[i][name].copy_(t)

    # ---- host-side bookkeeping -----------------------------------------------------------------------
    def _check_room(self) -> None:
        top = max(self.positions, default=0)
        for i, (kind, state) in enumerate(zip(self.model.kinds, self.cache.states)):
            if kind == "attention" and top >= state.max_len:
                raise ValueError(f"StaticDecoder: a row is at position {top} but layer {i}'s KV buffer holds "
                                 f"{state.max_len} positions; make the cache with a larger max_len")
            if kind == "transmamba":
                before = [p for p in self.positions if p < state.transpoint]
                if before and max(before) >= state.kv_capacity:
                    raise ValueError(f"StaticDecoder: a row is at position {max(before)} before layer {i}'s "
                                     f"TransPoint but its KV buffer holds {state.kv_capacity} positions; "
                                     "make the cache with a larger max_len")

    def _convert_due(self) -> None:
        """Memory Converter for rows at or past P that are not converted yet; free fully converted caches."""
        for i, flags in self.converted.items():
            state, layer = self.cache.states[i], self.model.mixer(i)
            P = state.transpoint
            due = [r for r, (p, c) in enumerate(zip(self.positions, flags)) if p >= P and not c]
            if due:
                layer.convert_rows(state, torch.tensor(due, dtype=torch.long, device=state.ssm_state.device))
                for r in due:
                    flags[r] = True

    def _drop_converted_caches(self) -> None:
        for i, flags in self.converted.items():
            state = self.cache.states[i]
            if all(flags) and state.kv_B is not None:
                state.kv_B = state.kv_x = state.kv_dt = None

    # ---- the step ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 1 or ids.shape[0] != self.batch_size:
            raise ValueError(f"StaticDecoder.step: ids must have shape ({self.batch_size},), "
                             f"got {tuple(ids.shape)}")
        self._check_room()
        self._convert_due()
        modes = self.model.layer_modes(self.positions)
        if self.graph is not None and modes != self.graph_modes:
            if self.keep_graphs:  # a later run (`reset`) may see this signature again
                self.saved_graphs[self.graph_modes] = (self.graph, self._logits)
            self.graph = self.graph_modes = None  # never replayed again in this run: positions only grow
        if self.graph is None and modes in self.saved_graphs:
            self.graph, self._logits = self.saved_graphs.pop(modes)
            self.graph_modes = modes
        if self.graph is None and not self.keep_graphs:
            self._drop_converted_caches()
        if not self.cuda_graph:
            out = self._run(ids, modes)
        elif modes == self.graph_modes:
            if ids is not self._ids:  # a tail's output fed straight back needs no copy
                self._ids.copy_(ids)
            self.graph.replay()
            out = self._logits
        elif modes == self.eager_modes:
            out = self._capture_and_run(ids, modes)
        else:
            out = self._eager_on_stream(ids, modes)
            self.eager_modes = modes
        self.positions = [p + 1 for p in self.positions]
        return out

    def _run(self, ids: torch.Tensor, modes: tuple) -> torch.Tensor:
        """model.step, then the tail (if any): the work of one step, eager or under capture."""
        logits = self.model.step(ids, self.cache, modes, self.consts)
        return logits if self.tail is None else self.tail(logits)

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.model.device)
        return self._stream

    def _eager_on_stream(self, ids: torch.Tensor, modes: tuple) -> torch.Tensor:
        stream = self._side_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self._run(ids, modes)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture_and_run(self, ids: torch.Tensor, modes: tuple) -> torch.Tensor:
        stream = self._side_stream()
        if self._ids is None:
            self._ids = torch.empty_like(ids)
        if ids is not self._ids:
            self._ids.copy_(ids)
        graph = torch.cuda.CUDAGraph()
        for gen in getattr(self.tail, "generators", ()):  # a tail's private generator, replayed in step
            graph.register_generator_state(gen)
        # Each graph gets its own private memory pool: a pool shared through graph_pool_handle() is released
        # when the previous graph (the only one holding it) is freed at a signature change, and capturing
        # into it afterwards fails an allocator assert (seen on the H100 with TransMamba mode changes).
        rng = _default_generator(self.model.device)
        try:
            saved = rng.clone_state() if rng is not None else None
        except RuntimeError:
            saved = None
        try:
            # relaxed: API calls that are not stream work (e.g. loading a kernel module) stay legal; this is
            # the mode the H100 graph tests passed in (docs/results/gpu-tests-after-graph-pool-fix.txt)
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="relaxed"):
                out = self._run(self._ids, modes)
                if self.tail is not None:  # the next step reads its ids where this one wrote them
                    self._ids.copy_(out)
                    out = self._ids
        except RuntimeError as err:  # capture recorded nothing that ran: go on without graphs
            self.capture_error = repr(err)
            self.cuda_graph = False
            self.saved_graphs.clear()
            if saved is not None:  # a failed capture can leave the default generator in capture mode
                try:
                    rng.graphsafe_set_state(saved)
                except RuntimeError:
                    pass
            first = (str(err).strip().splitlines() or [""])[0][:200]  # one line (full error: capture_error)
            warnings.warn(f"StaticDecoder: CUDA-graph capture failed, decoding without graphs: "
                          f"{type(err).__name__}: {first}", RuntimeWarning, stacklevel=3)
            torch.cuda.synchronize()
            return self._run(self._ids, modes)
        self.graph, self.graph_modes, self._logits = graph, modes, out
        self.captures += 1
        graph.replay()  # capturing recorded the step without running it
        return out


def _default_generator(device: torch.device):
    """The default CUDA generator of `device` (graph capture registers it), or None."""
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    except (RuntimeError, IndexError, AttributeError):
        return None


__all__ = ["StaticDecoder", "graph_supported"]
