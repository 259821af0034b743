"""The server's decode loop: one background thread that batches every running request into one model step.

    batcher = Batcher(model, tokenizer, max_batch=16)
    batcher.start()
    job = batcher.submit(request, emit)       # emit(event) is called from the batcher thread
    ...
    batcher.stop()

Continuous batching. The thread loops over:
1. admit: pending jobs with the running batch's TransPoint schedule (any, when nothing runs) join, up to
   `max_batch` rows; they are prefilled together (`inference.generate.prefill`: grouped by prompt length)
   and their decode states appended to the running cache (`ModelCache.stack`);
2. sample one token per row from its logits: greedy rows with one argmax, sampled rows one by one with their
   own `torch.Generator` (seeded from the request's `seed`), exactly as `generate` samples a batch of one;
3. emit each row's token (and its new text), finish rows that hit a stop token, a stop string, max_tokens
   or whose client went away, and drop their rows from the cache (`ModelCache.select`);
4. one `model.step` for the remaining rows (on CUDA through `StaticDecoder`, replayed from CUDA graphs when
   enabled; the decoder is rebuilt whenever the batch changes).
So each row sees the same prefill, the same sampling calls and the same step math as `model.generate` on
its prompt alone; only the floating-point rounding of batched matmuls can differ.

TransPoints are per layer, not per row, so rows with different schedules cannot share a cache: a job whose
schedule differs from the running batch's waits until that batch drains, and jobs that arrive after it wait
behind it whatever their schedule (first come, first served, so no schedule starves). Events passed to `emit`:
    ("token", token_id, text_delta)     text_delta may be "" (held back: partial UTF-8 or a possible stop)
    ("done", finish_reason, text_delta) finish_reason "stop" (EOS or a stop string) or "length"
    ("error", message, "")              the step failed; the job is over
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import traceback
from collections.abc import Callable

import torch

from transmamba.inference.cache import ModelCache
from transmamba.inference.generate import prefill
from transmamba.inference.sampling import make_generator, sample_next
from transmamba.serving.protocol import GenerationRequest

Event = tuple[str, object, str]


@dataclasses.dataclass(eq=False)
class Job:
    """One request in flight: its parsed request, resolved schedule, output so far and event callback."""

    req: GenerationRequest
    points: tuple[int, ...]
    emit: Callable[[Event], None]
    stop_ids: frozenset[int]
    tokenizer: object
    ids: list[int] = dataclasses.field(default_factory=list)
    sent: str = ""  # text already emitted
    finish_reason: str | None = None
    cancelled: bool = False
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        """The client went away: the row is dropped at the next step (thread-safe: a flag)."""
        self.cancelled = True

    def push(self, tok: int) -> bool:
        """Record one sampled token and emit it; True when the job is finished."""
        self.ids.append(tok)
        last = len(self.ids) >= self.req.max_tokens
        text = self.tokenizer.decode([t for t in self.ids if t not in self.stop_ids])
        if tok in self.stop_ids:  # text held back (partial UTF-8, a possible stop string's start) goes out
            return self._finish("stop", text, tok)
        for s in self.req.stop:
            at = text.find(s, max(0, len(self.sent) - len(s) + 1))
            if at >= 0:
                return self._finish("stop", text[:at], tok)
        if last:
            return self._finish("length", text, tok)
        hold = max((len(s) - 1 for s in self.req.stop), default=0)  # a stop string may still complete
        safe = len(text) - hold
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            safe = min(safe, len(text) - 1)
        delta = text[len(self.sent):safe] if safe > len(self.sent) else ""
        self.sent += delta
        self.emit(("token", tok, delta))
        return False

    def _finish(self, reason: str, final_text: str, tok: int) -> bool:
        delta = final_text[len(self.sent):] if len(final_text) > len(self.sent) else ""
        self.sent += delta
        self.finish_reason = reason
        self.emit(("token", tok, delta))
        self.emit(("done", reason, ""))
        return True


class Batcher:
    """See the module docstring. `set_points(points)` puts a schedule on the model's TransMamba layers."""

    def __init__(self, model, tokenizer, *, max_batch: int = 16, cuda_graph: bool = False, seed: int = 0):
        if max_batch < 1:
            raise ValueError(f"Batcher: max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer, self.max_batch = model, tokenizer, int(max_batch)
        self.cuda_graph = bool(cuda_graph)
        self.layers = model.transmamba_layers()
        self.default_points = tuple(layer.transpoint for layer in self.layers)
        self._rng = torch.Generator().manual_seed(int(seed))  # seeds requests that give none
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and load reports)
        self.max_rows_seen = 0  # the largest batch one step has decoded
        self.running = 0  # rows in the running batch

    # ---- submission (any thread) -------------------------------------------------------------------
    def submit(self, req: GenerationRequest, points: tuple[int, ...], emit: Callable[[Event], None]) -> Job:
        stops = frozenset() if self.tokenizer.eos_id is None else frozenset({int(self.tokenizer.eos_id)})
        job = Job(req=req, points=tuple(points), emit=emit, stop_ids=stops, tokenizer=self.tokenizer)
        if not req.greedy:
            seed = req.seed if req.seed is not None else int(torch.randint(0, 2**62, (1,),
                                                                           generator=self._rng))
            job.generator = make_generator(seed, self.model.device)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self._cond.notify()
        return job

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="transmamba-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---- the loop (batcher thread) -------------------------------------------------------------------
    def _take(self, key: tuple[int, ...] | None, running: int) -> list[Job]:
        with self._cond:
            while running == 0 and not self._pending and not self._stopping:
                self._cond.wait(0.5)
            if self._stopping:
                return []
            while self._pending and self._pending[0].cancelled:
                self._pending.popleft()
            if not self._pending:
                return []
            if key is None:
                key = self._pending[0].points
            room = self.max_batch - running
            # First come, first served: take jobs in arrival order up to the first one with another schedule;
            # it waits for this batch to drain, and the jobs behind it wait for it.
            taken = []
            for j in self._pending:
                if j.cancelled:
                    continue
                if len(taken) == room or j.points != key:
                    break
                taken.append(j)
            for j in taken:
                self._pending.remove(j)
            return taken

    def set_points(self, points: tuple[int, ...]) -> None:
        for layer, p in zip(self.layers, points):
            layer.transpoint = int(p)

    def _run(self) -> None:
        jobs: list[Job] = []
        cache: ModelCache | None = None
        logits: torch.Tensor | None = None
        step_fn = None
        while True:
            new = self._take(jobs[0].points if jobs else None, len(jobs))
            if self._stopping:
                for j in jobs:
                    j.emit(("error", "the server is shutting down", ""))
                return
            if not jobs and not new:
                continue
            try:
                with torch.no_grad():
                    if new:
                        if not jobs:
                            self.set_points(new[0].points)
                        prompts = [j.req.prompt_ids for j in new]
                        max_len = max(len(j.req.prompt_ids) + j.req.max_tokens for j in new)
                        c, lg, order = prefill(self.model, prompts, max_len)
                        new = [new[i] for i in order]
                        cache = c if cache is None else ModelCache.stack([cache, c])
                        logits = lg if logits is None else torch.cat([logits, lg])
                        jobs = jobs + new
                        step_fn = None
                    tokens = self._sample(jobs, logits)
                    keep = [i for i, (j, t) in enumerate(zip(jobs, tokens))
                            if not j.cancelled and not j.push(t)]
                    if len(keep) < len(jobs):
                        jobs = [jobs[i] for i in keep]
                        cache = cache.select(keep) if keep else None
                        step_fn = None
                    self.running = len(jobs)
                    if not jobs:
                        logits = None
                        continue
                    if step_fn is None:
                        step_fn = self._step_fn(cache)
                    ids = torch.tensor([tokens[i] for i in keep], dtype=torch.long, device=self.model.device)
                    logits = step_fn(ids).float()
                    self.steps += 1
                    self.max_rows_seen = max(self.max_rows_seen, len(jobs))
            except Exception as err:  # a failed step ends its jobs, never the server
                first = (str(err).splitlines() or [""])[0]
                msg = f"generation failed: {type(err).__name__}: {first}"
                traceback.print_exc()
                for j in dict.fromkeys(jobs + new):  # (new jobs may already be in jobs)
                    if j.finish_reason is None:
                        j.emit(("error", msg, ""))
                jobs, cache, logits, step_fn = [], None, None, None
                self.running = 0

    def _step_fn(self, cache: ModelCache):
        model = self.model
        if model.device.type == "cuda":
            from transmamba.inference.static_decode import StaticDecoder, graph_supported

            if graph_supported(model)[0]:
                return StaticDecoder(model, cache, cuda_graph=self.cuda_graph).step
        return lambda ids: model.step(ids, cache)

    @staticmethod
    def _sample(jobs: list[Job], logits: torch.Tensor) -> list[int]:
        """One token per row, each row as `generate` would sample it alone."""
        out = logits.argmax(dim=-1).tolist()
        for r, j in enumerate(jobs):
            if not j.req.greedy:
                out[r] = int(sample_next(logits[r:r + 1], temperature=j.req.temperature, top_k=j.req.top_k,
                                         top_p=j.req.top_p, generator=j.generator)[0])
        return out


__all__ = ["Batcher", "Event", "Job"]
