"""Small-scale reproduction of TransMamba's (arXiv 2503.24067) and Mamba-2-Hybrid's (arXiv 2406.07887) claims.

    python experiments/reproduce_transmamba.py            # the full run (GPU: many workers in parallel)
    python experiments/reproduce_transmamba.py --quick    # a smoke run in a few minutes of CPU

What it trains (all sizes tiny, equal parameter counts up to the MLP width, see `model_config`):

* kinds: `transformer` ('*-' x 8, RoPE), `mamba2` ('M-' x 8), `hybrid` (Mamba-2-Hybrid's layout at this
  depth: 'M-M-M-*-M-M-M-M-', one attention layer in eight, no position embedding, as the paper), and
  `tm-V1` .. `tm-V9` (TransMamba 'T-' x 8 with the named TransPoint schedule scaled to the training
  length, see `transmamba.models.schedules`).
* recall: PhoneBook and MQAR rows of `--train-len` tokens (fresh rows every step); scored at several
  context lengths, the longer ones beyond training; TransMamba models also with the schedule swapped at
  inference (rescaled to the evaluated length, all attention, all SSM).
* text: the bundled Shakespeare plays (byte-level BPE from `transmamba.data`), random windows of
  `--train-len` tokens; validation loss on held-out plays, and for each TransMamba model the validation
  loss under every other schedule (the paper's inference-time swap, Appendix A.4.1).

Jobs run in worker processes (one torch thread each); on a GPU several share it. The run first times a few
steps of the slowest model under full load and then sets the step count so that all jobs fit in
`--budget-s`; jobs run in priority order (all kinds of seed 0 first), so a run cut short still has every
kind once. Results go to `--out`: results.json (everything, incl. curves), results.csv (one metric a row),
tables.md (mean ± std over seeds) and PNG plots. `--from-json FILE` redraws tables and plots only.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SCHEDULES = ["V1", "V2", "V3", "V4", "V5", "V6", "V7", "V8", "V9"]
BASELINES = ["transformer", "mamba2", "hybrid"]
RECALL_KINDS = ["transformer", "mamba2", "hybrid", "tm-V1", "tm-V7", "tm-V8", "tm-V9"]
TEXT_KINDS = ["transformer", "mamba2", "hybrid"] + [f"tm-{s}" for s in SCHEDULES]
GPU_STAGES = ("recall-gpu", "text-gpu", "pilot-gpu")  # experiments/repro_gpu.py (CUDA-graph runner)

# The papers' numbers we set ours beside (TransMamba Table 2 / Table 6; Mamba-2-Hybrid Sec. 7).
PAPER = {
    "phonebook_400m": {"transformer": 38.7, "tm-V9": 39.7, "hybrid": 17.6, "mamba2": 13.1},
    "val_loss_21b": {
        "tm-V9": 2.898,
        "tm-V8": 3.022,
        "tm-V7": 3.084,
        "transformer": 3.098,
        "tm-V1..V3": "3.30-3.36",
    },
}


# ----------------------------------------------------------------------------------------------- models


def model_config(kind: str, *, vocab_size: int, train_len: int, d_model: int, n_layers: int, d_ff=None):
    from transmamba.models.config import ModelConfig

    base = dict(
        vocab_size=vocab_size,
        d_model=d_model,
        n_heads=max(1, d_model // 16),
        d_state=16,
        headdim=16,
        expand=2,
        ngroups=4,
        chunk_size=64,
        mlp_act="swiglu",
        max_seq_len=8 * train_len,
        tie_embeddings=True,
    )
    if d_ff is not None:
        base["d_ff"] = d_ff
    if kind == "transformer":
        return ModelConfig(pattern="*-" * n_layers, rope=True, **base)
    if kind == "mamba2":
        return ModelConfig(pattern="M-" * n_layers, **base)
    if kind == "hybrid":
        mix = ["M"] * n_layers
        mix[max(0, n_layers // 2 - 1)] = "*"  # one attention layer in the middle of the stack
        return ModelConfig(pattern="".join(m + "-" for m in mix), rope=False, **base)
    if kind.startswith("tm-"):
        return ModelConfig(
            pattern="T-" * n_layers, transpoints=kind[3:], schedule_train_len=train_len, **base
        )
    raise ValueError(f"unknown model kind {kind!r}")


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def equal_param_config(kind: str, **kw):
    """Config for `kind`; attention-based kinds get the MLP width that brings their parameter count to the
    Mamba-2/TransMamba one (a T layer holds exactly Mamba-2's parameters)."""
    from transmamba.models.lm import CausalLM

    if kind.startswith("tm-") or kind == "mamba2":
        return model_config(kind, **kw)
    target = n_params(CausalLM(model_config("mamba2", **kw)))
    ref = model_config(kind, **kw)
    best, best_gap = ref, abs(n_params(CausalLM(ref)) - target)
    for d_ff in range(ref.ffn_dim, 8 * kw["d_model"] + 1, 8):
        cfg = model_config(kind, d_ff=d_ff, **kw)
        gap = abs(n_params(CausalLM(cfg)) - target)
        if gap < best_gap:
            best, best_gap = cfg, gap
        elif gap > best_gap:
            break
    return best


def resolve(schedule, n_t: int, length: int):
    from transmamba.models.schedules import resolve_schedule

    if schedule == "attention":
        return [10**9] * n_t
    if schedule == "ssm":
        return [0] * n_t
    return resolve_schedule(schedule, n_t, train_len=length)


# ----------------------------------------------------------------------------------------------- training


def make_optimizer(model, lr, steps, device):
    warmup = max(1, min(100, steps // 10))
    try:
        from transmamba.training.optim import build_optimizer, build_scheduler

        opt = build_optimizer(model, lr=lr, weight_decay=0.1, betas=(0.9, 0.95), device=device)
        sched = build_scheduler(opt, warmup_steps=warmup, max_steps=steps, min_lr_ratio=0.1)
    except ImportError:  # the trainer's helpers not installed: plain AdamW + warmup-cosine
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

        def fn(s):
            if s < warmup:
                return (s + 1) / warmup
            p = min(1.0, (s - warmup) / max(1, steps - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    return opt, sched


def train(model, next_batch, steps, lr, device, deadline=None):
    """Plain loop: AdamW (wd 0.1 on matrices), warmup + cosine, clip 1.0. Returns (curve, steps_done)."""
    opt, sched = make_optimizer(model, lr, steps, device)
    model.train()
    curve, ema = [], None
    for step in range(steps):
        ids, labels = next_batch()
        out = model(ids.to(device), labels=labels.to(device))
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        v = float(loss.detach())
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        if step % 25 == 0 or step == steps - 1:
            curve.append([step, round(ema, 5)])
        if deadline is not None and time.time() > deadline:
            return curve, step + 1
    return curve, steps


# ----------------------------------------------------------------------------------------------- jobs


def _setup_worker():
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _device(args):
    if args["device"] == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args["device"])


def load_text(args):
    """(train ids, val ids, vocab) as int64 arrays from the carried .npz or built from the plays."""
    path = Path(args["text_tokens"])
    if path.is_file():
        z = np.load(path)
        return z["train"].astype(np.int64), z["val"].astype(np.int64), int(z["vocab_size"])
    from transmamba.data.text import load_documents, train_val_split
    from transmamba.data.tokenizer import encode_documents, get_tokenizer

    docs = load_documents(None)
    tr, va = train_val_split(docs, 0.05, seed=0)
    tok = get_tokenizer(tr, args["text_vocab"])

    def flat(ds):
        return np.concatenate([np.append(a, tok.eos_id) for a in encode_documents(tok, ds)]).astype(np.int64)

    train_ids, val_ids = flat(tr), flat(va)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train=train_ids.astype(np.int32), val=val_ids.astype(np.int32), vocab_size=tok.vocab_size)
    return train_ids, val_ids, tok.vocab_size


def run_job(job):
    """One training run plus all its evaluations; returns a JSON-able dict (never raises)."""
    _setup_worker()
    t0 = time.time()
    if job.get("start_by") is not None and t0 > job["start_by"]:
        return {**{k: job[k] for k in ("part", "task", "kind", "seed")}, "error": "skipped: out of time"}
    try:
        return _run_job(job, t0)
    except Exception as err:  # a broken kind must not take the whole reproduction down
        import traceback

        return {
            **{k: job[k] for k in ("part", "task", "kind", "seed")},
            "error": repr(err),
            "traceback": traceback.format_exc()[-3000:],
            "wall_s": time.time() - t0,
        }


def _run_job(job, t0):
    from transmamba.data.synthetic import make_task
    from transmamba.eval.perplexity import perplexity
    from transmamba.eval.recall import evaluate_lengths
    from transmamba.models.lm import CausalLM

    a = job["args"]
    device = _device(a)
    if a.get("triton") == "off":  # the chunked-torch SSD path instead of the Triton kernels
        os.environ["TRANSMAMBA_DISABLE_TRITON"] = "1"
    else:
        os.environ.pop("TRANSMAMBA_DISABLE_TRITON", None)
    torch.manual_seed(job["seed"])
    L = task_train_len(a, job["task"])
    if job["part"] == "text":
        train_ids, val_ids, vocab = load_text(a)
    else:
        vocab = a["mqar_vocab"] if job["task"] == "mqar" else a["recall_vocab"]
    cfg = equal_param_config(
        job["kind"], vocab_size=vocab, train_len=L, d_model=a["d_model"], n_layers=a["n_layers"]
    )
    model = CausalLM(cfg).to(device)
    rec = {k: job[k] for k in ("part", "task", "kind", "seed")}
    rec.update(params=n_params(model), pattern=cfg.pattern, d_ff=cfg.ffn_dim)
    trained_tp = list(cfg.resolved_transpoints()) if cfg.n_transmamba else None
    if trained_tp is not None:
        rec["transpoints"] = trained_tp

    if job["part"] in ("recall", "calibrate"):
        task = job["task"] or "phonebook"
        kw = (
            dict(name_len=a["name_len"], number_len=a["number_len"], n_queries=a["train_queries"])
            if task == "phonebook"
            else {}
        )
        rng = np.random.default_rng(1000 + job["seed"])
        lo = max(16, int(a["train_len_min_frac"] * L))

        def next_batch():  # one length per batch, uniform in [lo, L]: short rows give signal early
            length = int(rng.integers(lo, L + 1))
            kw_b = dict(kw)
            if task == "phonebook":  # as many queries as asked, at most half the book
                kw_b["n_queries"] = _fit_queries(length, a)
            b = make_task(task, a["recall_batch"], length, vocab_size=vocab, seed=rng, **kw_b)
            return b.input_ids, b.labels
    else:
        rng = np.random.default_rng(2000 + job["seed"])
        offs = np.arange(L)

        def next_batch():
            starts = rng.integers(0, len(train_ids) - L, size=a["batch_size"])
            ids = torch.from_numpy(train_ids[starts[:, None] + offs])
            return ids, ids

    steps = job["steps"]
    if job["part"] == "calibrate":  # warm up (kernel compilation, allocator) before timing
        train(model, next_batch, 2, a["lr"], device)
        if device.type == "cuda":
            torch.cuda.synchronize()
    t_train = time.time()
    curve, done = train(model, next_batch, steps, a["lr"], device, deadline=job.get("deadline"))
    rec.update(
        steps=done,
        steps_planned=steps,
        truncated=done < steps,
        curve=curve,
        train_s=round(time.time() - t_train, 2),
        final_loss=curve[-1][1] if curve else None,
    )
    if job["part"] == "calibrate":
        rec["step_s"] = rec["train_s"] / max(1, done)
        return rec
    model.eval()
    n_t = cfg.n_transmamba

    if job["part"] == "recall":
        task = job["task"]
        kw = dict(name_len=a["name_len"], number_len=a["number_len"]) if task == "phonebook" else {}
        lengths = a["eval_lengths"] if task == "phonebook" else a["mqar_lengths"]
        evals = {}
        swaps = ["train"] + (["scaled", "attention", "ssm"] if n_t else [])
        for sw in swaps:
            rows = []
            for length in lengths:
                if n_t:
                    sched = (
                        trained_tp
                        if sw == "train"
                        else resolve(job["kind"][3:] if sw == "scaled" else sw, n_t, length)
                    )
                    model.set_transpoints(list(sched))
                gen = task == "phonebook" and sw == "train" and length == L
                try:
                    r = evaluate_lengths(
                        model,
                        task,
                        [length],
                        n_rows=a["eval_rows"],
                        vocab_size=vocab,
                        seed=777 + length,
                        batch_size=a["eval_batch"],
                        generate=gen,
                        **kw,
                    )[0]
                except Exception as err:  # e.g. generate() failing: keep the teacher-forced numbers
                    r = evaluate_lengths(
                        model,
                        task,
                        [length],
                        n_rows=a["eval_rows"],
                        vocab_size=vocab,
                        seed=777 + length,
                        batch_size=a["eval_batch"],
                        **kw,
                    )[0]
                    r["generate_error"] = repr(err)
                rows.append(
                    {
                        k: r[k]
                        for k in r
                        if k
                        in (
                            "length",
                            "token_accuracy",
                            "answer_accuracy",
                            "generate_exact_match",
                            "generate_error",
                            "by_book_position",
                            "n_entries",
                            "n_pairs",
                            "chance",
                        )
                    }
                )
            evals[sw] = rows
        rec["eval"] = evals
    else:
        val = torch.from_numpy(val_ids)
        res = perplexity(model, val, seq_len=L, batch_size=a["eval_batch"], max_windows=a["val_windows"])
        rec["val_loss"] = res["loss"]
        rec["val_tokens"] = res["tokens"]
        if n_t:
            swap = {}
            for s in SCHEDULES + ["attention", "ssm"]:
                model.set_transpoints(list(resolve(s, n_t, L)))
                swap[s] = perplexity(
                    model, val, seq_len=L, batch_size=a["eval_batch"], max_windows=a["val_windows"]
                )["loss"]
            rec["swap_val_loss"] = swap
            # longer context: the trained schedule as is vs rescaled to 4x the training length
            long = {}
            for name, sched in (("train", trained_tp), ("scaled", resolve(job["kind"][3:], n_t, 4 * L))):
                model.set_transpoints(list(sched))
                long[name] = perplexity(
                    model,
                    val,
                    seq_len=4 * L,
                    batch_size=max(1, a["eval_batch"] // 4),
                    max_windows=max(1, a["val_windows"] // 4),
                )["loss"]
            rec["long_val_loss"] = long
        else:
            rec["long_val_loss"] = {
                "train": perplexity(
                    model,
                    val,
                    seq_len=4 * L,
                    batch_size=max(1, a["eval_batch"] // 4),
                    max_windows=max(1, a["val_windows"] // 4),
                )["loss"]
            }
    rec["wall_s"] = round(time.time() - t0, 2)
    return rec


# ----------------------------------------------------------------------------------------------- runner


def _fit_queries(length, a):
    from transmamba.data.synthetic import phonebook_length

    nl, dl = a["name_len"], a["number_len"]
    q = a["train_queries"]
    while q > 1:
        n_entries = (length - phonebook_length(0, name_len=nl, number_len=dl, n_queries=q)) // (nl + dl + 2)
        if n_entries >= 2 * q:
            break
        q -= 1
    return q


def mqar_values(a):
    from transmamba.data.synthetic import mqar_split

    return mqar_split(a["mqar_vocab"])[1]


def task_train_len(a, task):
    return a["mqar_train_len"] if task == "mqar" else a["train_len"]


def build_jobs(a):
    """Priority order: PhoneBook (the longest runs) first, then text seed by seed, then MQAR."""
    jobs = []
    for seed in range(a["recall_seeds"] or a["seeds"]):
        for task in [t for t in a["recall_tasks"] if t != "mqar"]:
            for kind in a["recall_kinds"]:
                jobs.append({"part": "recall", "task": task, "kind": kind, "seed": seed})
    for seed in range(a["seeds"]):
        if a["text"]:
            for kind in a["text_kinds"]:
                jobs.append({"part": "text", "task": "shakespeare", "kind": kind, "seed": seed})
    if "mqar" in a["recall_tasks"]:
        for seed in range(a["mqar_seeds"]):
            for kind in a["recall_kinds"]:
                jobs.append({"part": "recall", "task": "mqar", "kind": kind, "seed": seed})
    return jobs


def run_all(a, out: Path, log):
    t_start = time.time()
    deadline = t_start + a["budget_s"]
    ctx = mp.get_context("spawn")
    if a["text"]:
        load_text(a)  # tokenize once, before the workers start
    jobs = build_jobs(a)
    results = []
    with ctx.Pool(a["workers"], initializer=_setup_worker) as pool:
        steps = a["steps"]
        if steps is None:  # calibrate: time the slowest kind under full load
            cal = [
                {
                    "part": "calibrate",
                    "task": "phonebook",
                    "kind": "tm-V9",
                    "seed": 100 + i,
                    "steps": a["calib_steps"],
                    "args": a,
                }
                for i in range(a["workers"])
            ]
            variants = (
                ["on", "off"] if (a["triton"] == "auto" and _device(a).type == "cuda") else [a["triton"]]
            )
            timing = {}
            for v in variants:
                got = pool.map(run_job, [{**c, "args": {**a, "triton": v}} for c in cal], chunksize=1)
                errs = [g["error"] for g in got if "error" in g]
                timing[v] = (
                    float(np.median([g["step_s"] for g in got if "step_s" in g])) if not errs else np.inf
                )
                log(f"calibration (triton={v}): {timing[v] * 1000:.1f} ms/step; errors: {errs[:1]}")
            best = min(timing, key=timing.get)
            a["triton"] = best
            step_s = timing[best]
            if not np.isfinite(step_s):
                raise RuntimeError("calibration failed for every SSD backend; see the errors above")
            left = deadline - time.time()
            n_rec = sum(j["part"] == "recall" for j in jobs)
            n_txt = len(jobs) - n_rec
            share = a["recall_share"] if n_rec and n_txt else (1.0 if n_rec else 0.0)
            work = left * a["workers"] * 0.8  # worker-seconds for training; evaluation takes the rest

            def fit(frac, n):
                return int(max(a["min_steps"], min(a["max_steps"], frac * work / max(1, n) / step_s)))

            steps = {"recall": fit(share, n_rec), "text": fit(1 - share, n_txt)}
            log(
                f"calibration: {step_s * 1000:.1f} ms/step under {a['workers']} workers; "
                f"{len(jobs)} jobs, {left:.0f} s left -> {steps} steps per job"
            )
            results.append(
                {
                    "part": "calibration",
                    "step_s": step_s,
                    "steps": steps,
                    "workers": a["workers"],
                    "timing": timing,
                    "triton": best,
                }
            )
        if not isinstance(steps, dict):
            steps = {"recall": steps, "text": steps}
        for j in jobs:  # a job that could not finish half its training in time is skipped
            est = steps[j["part"]] * step_s / 0.8 if a["steps"] is None else 0.0
            j.update(steps=steps[j["part"]], args=a, deadline=deadline + 30, start_by=deadline - 0.5 * est)
        for rec in pool.imap_unordered(run_job, jobs, chunksize=1):
            results.append(rec)
            msg = rec.get("error") or (f"loss {rec.get('final_loss')} val {rec.get('val_loss', '')}")
            log(
                f"[{time.time() - t_start:6.0f}s] {rec['part']:<6} {rec['task']:<11} {rec['kind']:<11} "
                f"seed {rec['seed']} steps {rec.get('steps')} {msg}"
            )
            save(results, a, out)
    return results


def save(results, a, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in a.items() if k != "out"}
    (out / "results.json").write_text(
        json.dumps({"args": meta, "paper": PAPER, "results": results}, indent=1)
    )


# ----------------------------------------------------------------------------------------------- report


def _ms(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else 0.0, len(vals)


def _fmt(m, s, n, pct=False):
    if m is None:
        return "—"
    k = 100 if pct else 1
    d = 1 if pct else 3
    return f"{m * k:.{d}f} ± {s * k:.{d}f}" + ("" if n > 1 else " (1 seed)")


def flat_rows(results):
    rows = []
    for r in results:
        if r.get("part") not in ("recall", "text") or "error" in r:
            continue
        base = {
            "part": r["part"],
            "task": r["task"],
            "kind": r["kind"],
            "seed": r["seed"],
            "steps": r["steps"],
            "params": r["params"],
        }
        if r["part"] == "recall":
            for sw, rows_ in r["eval"].items():
                for e in rows_:
                    for m in ("token_accuracy", "answer_accuracy", "generate_exact_match"):
                        if m in e:
                            rows.append(
                                {**base, "schedule": sw, "length": e["length"], "metric": m, "value": e[m]}
                            )
        else:
            rows.append(
                {**base, "schedule": "train", "length": "", "metric": "val_loss", "value": r["val_loss"]}
            )
            for s, v in r.get("swap_val_loss", {}).items():
                rows.append({**base, "schedule": s, "length": "", "metric": "val_loss", "value": v})
            for s, v in r.get("long_val_loss", {}).items():
                rows.append({**base, "schedule": s, "length": "4x", "metric": "val_loss", "value": v})
    return rows


def report(data, out: Path, log=print):
    a, results = data["args"], data["results"]
    rows = flat_rows(results)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(
            f,
            fieldnames=[
                "part",
                "task",
                "kind",
                "seed",
                "steps",
                "params",
                "schedule",
                "length",
                "metric",
                "value",
            ],
        )
        w.writeheader()
        w.writerows(rows)
    md = []
    errs = [r for r in results if "error" in r]
    runs = [r for r in results if r.get("part") in ("recall", "text") and "error" not in r]
    params = {}
    for r in runs:
        params.setdefault((r["part"], r["kind"]), (r["params"], r["pattern"], r.get("d_ff")))
    md.append("### Models\n\n| part | kind | pattern | MLP width | parameters |\n|---|---|---|---|---|")
    for (part, kind), (p, pat, dff) in sorted(params.items()):
        md.append(f"| {part} | {kind} | `{pat}` | {dff} | {p:,} |")
    steps = sorted({r["steps"] for r in runs})
    md.append(
        f"\nSteps per run: {steps}; batch {a['batch_size']} rows of {a['train_len']} tokens; "
        f"seeds: {a['seeds']}.\n"
    )

    def get(part, task, kind, sw, length, metric):
        return [
            x["value"]
            for x in rows
            if x["part"] == part
            and x["task"] == task
            and x["kind"] == kind
            and x["schedule"] == sw
            and x["length"] == length
            and x["metric"] == metric
        ]

    for task in a["recall_tasks"]:
        lengths = a["eval_lengths"] if task == "phonebook" else a["mqar_lengths"]
        metric = "answer_accuracy"
        names = {
            "answer_accuracy": "answer accuracy (whole number / value)",
            "token_accuracy": "digit accuracy",
        }
        chance = {
            "answer_accuracy": 1e-3 if task == "phonebook" else 1 / mqar_values(a),
            "token_accuracy": 0.1,
        }
        for met in ["answer_accuracy"] + (["token_accuracy"] if task == "phonebook" else []):
            md.append(
                f"### {task}: {names[met]} (%) by context length (trained at {task_train_len(a, task)}; "
                f"chance {100 * chance[met]:.2f} %)\n"
            )
            md.append("| kind | " + " | ".join(str(x) for x in lengths) + " |")
            md.append("|---|" + "---|" * len(lengths))
            for kind in a["recall_kinds"]:
                cells = [_fmt(*_ms(get("recall", task, kind, "train", L, met)), pct=True) for L in lengths]
                md.append(f"| {kind} | " + " | ".join(cells) + " |")
            md.append("")
        met = "token_accuracy" if task == "phonebook" else metric
        md.append(
            f"\nTransMamba with the schedule swapped at inference ({names[met]} %; 'train' = as trained):\n"
        )
        md.append("| kind | swap | " + " | ".join(str(x) for x in lengths) + " |")
        md.append("|---|---|" + "---|" * len(lengths))
        for kind in [k for k in a["recall_kinds"] if k.startswith("tm-")]:
            for sw in ("train", "scaled", "attention", "ssm"):
                cells = [_fmt(*_ms(get("recall", task, kind, sw, L, met)), pct=True) for L in lengths]
                md.append(f"| {kind} | {sw} | " + " | ".join(cells) + " |")
        if task == "phonebook":
            gen = {
                k: _ms(get("recall", task, k, "train", a["train_len"], "generate_exact_match"))
                for k in a["recall_kinds"]
            }
            md.append(
                "\nPhoneBook exact match by greedy generation at the training length (%): "
                + ", ".join(f"{k} {_fmt(*v, pct=True)}" for k, v in gen.items())
                + "\n"
            )
    if a["text"]:
        md.append("### Shakespeare: validation loss (nats/token)\n")
        md.append(
            f"| kind | val loss @ {a['train_len']} | val loss @ {4 * a['train_len']} (as trained) | "
            f"@ {4 * a['train_len']}, schedule rescaled |"
        )
        md.append("|---|---|---|---|")
        order = []
        for kind in a["text_kinds"]:
            m = _ms(get("text", "shakespeare", kind, "train", "", "val_loss"))
            order.append((m[0] if m[0] is not None else 99, kind, m))
        for _, kind, m in sorted(order):
            lt = _ms(get("text", "shakespeare", kind, "train", "4x", "val_loss"))
            ls = _ms(get("text", "shakespeare", kind, "scaled", "4x", "val_loss"))
            md.append(f"| {kind} | {_fmt(*m)} | {_fmt(*lt)} | {_fmt(*ls)} |")
        tms = [k for k in a["text_kinds"] if k.startswith("tm-")]
        evs = SCHEDULES + ["attention", "ssm"]
        md.append(
            "\nSchedule swap at inference: rows = trained with, columns = evaluated with (val loss, "
            "mean over seeds; diagonal = as trained)\n"
        )
        md.append("| trained \\ eval | " + " | ".join(evs) + " |")
        md.append("|---|" + "---|" * len(evs))
        for k in tms:
            cells = []
            for e in evs:
                m = _ms(get("text", "shakespeare", k, e, "", "val_loss"))
                cells.append("—" if m[0] is None else f"{m[0]:.3f}")
            md.append(f"| {k} | " + " | ".join(cells) + " |")
    if errs:
        md.append("\n### Failed runs\n")
        for r in errs:
            md.append(f"- {r.get('part')} {r.get('task')} {r.get('kind')} seed {r.get('seed')}: {r['error']}")
    (out / "tables.md").write_text("\n".join(md) + "\n")
    try:
        plots(a, rows, results, out)
    except Exception as err:  # plotting must not lose the numbers
        log(f"plots failed: {err!r}")
    log(f"wrote {out}/results.json, results.csv, tables.md and plots")


def plots(a, rows, results, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(part, task, kind, sw, metric, lengths):
        ms = []
        for L in lengths:
            v = [
                x["value"]
                for x in rows
                if x["part"] == part
                and x["task"] == task
                and x["kind"] == kind
                and x["schedule"] == sw
                and x["length"] == L
                and x["metric"] == metric
            ]
            ms.append(_ms(v)[:2])
        return np.array([m if m is not None else np.nan for m, _ in ms], float), np.array(
            [s if s is not None else np.nan for _, s in ms], float
        )

    tasks = a["recall_tasks"]
    if tasks:
        fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            lengths = a["eval_lengths"] if task == "phonebook" else a["mqar_lengths"]
            met = "token_accuracy" if task == "phonebook" else "answer_accuracy"
            for kind in a["recall_kinds"]:
                m, s = series("recall", task, kind, "train", met, lengths)
                ax.errorbar(lengths, 100 * m, yerr=100 * s, marker="o", capsize=3, label=kind)
            ax.axvline(task_train_len(a, task), ls="--", c="gray", lw=1)
            ax.axhline(
                100 * (0.1 if task == "phonebook" else 1 / mqar_values(a)),
                ls=":",
                c="k",
                lw=1,
                label="chance",
            )
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context length (tokens; dashed: training length)")
            ax.set_ylabel("digit accuracy (%)" if task == "phonebook" else "answer accuracy (%)")
            ax.set_title(f"{task}: accuracy vs context length")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "recall_vs_length.png", dpi=110)
        plt.close(fig)

        tm = [k for k in a["recall_kinds"] if k.startswith("tm-")]
        fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            lengths = a["eval_lengths"] if task == "phonebook" else a["mqar_lengths"]
            met = "token_accuracy" if task == "phonebook" else "answer_accuracy"
            for i, kind in enumerate(tm):
                for sw, ls in (("train", "-"), ("scaled", "--"), ("attention", ":"), ("ssm", "-.")):
                    m, _ = series("recall", task, kind, sw, met, lengths)
                    ax.plot(lengths, 100 * m, ls=ls, marker="o", c=f"C{i}", label=f"{kind} {sw}")
            ax.axvline(task_train_len(a, task), ls="--", c="gray", lw=1)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context length")
            ax.set_ylabel("digit accuracy (%)" if task == "phonebook" else "answer accuracy (%)")
            ax.set_title(f"{task}: TransMamba schedule swapped at inference")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "recall_schedule_swap.png", dpi=110)
        plt.close(fig)

    if a["text"]:
        kinds = a["text_kinds"]
        ms = [
            _ms(
                [
                    x["value"]
                    for x in rows
                    if x["part"] == "text"
                    and x["kind"] == k
                    and x["schedule"] == "train"
                    and x["length"] == ""
                    and x["metric"] == "val_loss"
                ]
            )
            for k in kinds
        ]
        fig, ax = plt.subplots(figsize=(8, 4))
        xs = np.arange(len(kinds))
        ax.bar(
            xs,
            [m[0] or np.nan for m in ms],
            yerr=[m[1] or 0 for m in ms],
            capsize=3,
            color=["C0" if not k.startswith("tm-") else "C1" for k in kinds],
        )
        lo = np.nanmin([m[0] or np.nan for m in ms])
        hi = np.nanmax([m[0] or np.nan for m in ms])
        ax.set_ylim(lo - 0.1 * (hi - lo + 0.05), hi + 0.2 * (hi - lo + 0.05))
        ax.set_xticks(xs, kinds, rotation=30)
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title(f"Shakespeare, {a['train_len']}-token windows (mean ± std over seeds)")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(out / "text_val_loss.png", dpi=110)
        plt.close(fig)

        tms = [k for k in kinds if k.startswith("tm-")]
        evs = SCHEDULES + ["attention", "ssm"]
        mat = np.full((len(tms), len(evs)), np.nan)
        for i, k in enumerate(tms):
            for j, e in enumerate(evs):
                m = _ms(
                    [
                        x["value"]
                        for x in rows
                        if x["part"] == "text"
                        and x["kind"] == k
                        and x["schedule"] == e
                        and x["length"] == ""
                        and x["metric"] == "val_loss"
                    ]
                )[0]
                mat[i, j] = np.nan if m is None else m
        if np.isfinite(mat).any():
            fig, ax = plt.subplots(figsize=(9, 5))
            diag = np.array(
                [mat[i, j] for i, k in enumerate(tms) for j, e in enumerate(evs) if k == f"tm-{e}"]
            )
            vmax = np.nanpercentile(mat, 85) if np.isfinite(mat).sum() > 3 else np.nanmax(mat)
            im = ax.imshow(mat, cmap="viridis_r", vmin=np.nanmin(diag) if diag.size else None, vmax=vmax)
            for i in range(len(tms)):
                for j in range(len(evs)):
                    if np.isfinite(mat[i, j]):
                        light = mat[i, j] < (im.norm.vmin + im.norm.vmax) / 2  # yellow end of viridis_r
                        ax.text(
                            j,
                            i,
                            f"{mat[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            c="k" if light else "w",
                        )
            ax.set_xticks(range(len(evs)), evs, rotation=30)
            ax.set_yticks(range(len(tms)), tms)
            ax.set_xlabel("schedule at inference")
            ax.set_ylabel("schedule in training")
            ax.set_title("validation loss under an inference-time schedule swap")
            fig.colorbar(im)
            fig.tight_layout()
            fig.savefig(out / "text_schedule_swap.png", dpi=110)
            plt.close(fig)

        fig, ax = plt.subplots(figsize=(8, 4))
        for i, k in enumerate(kinds):
            cs = [
                r["curve"] for r in results if r.get("part") == "text" and r.get("kind") == k and "curve" in r
            ]
            if cs:
                c = np.array(cs[0])
                ax.plot(c[:, 0], c[:, 1], label=k, c=f"C{i % 10}", ls="-" if k.startswith("tm-") else "--")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (EMA)")
        ax.set_title("Shakespeare training curves (seed 0)")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "text_curves.png", dpi=110)
        plt.close(fig)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny, few steps, 1 seed, fewer kinds")
    p.add_argument("--out", default=str(ROOT / "docs" / "reproduction"), help="folder for results and plots")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None, help="parallel jobs (default: 1 on CPU, 12 on GPU)")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget for all jobs")
    p.add_argument(
        "--steps", type=int, default=None, help="steps per run (default: calibrated to the budget)"
    )
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument(
        "--stage",
        choices=("all", "run1", "run2") + GPU_STAGES,
        default="all",
        help="run1: PhoneBook + MQAR, all recall kinds, 3 seeds (short training); run2: longer PhoneBook "
        "training of 5 kinds + Shakespeare for every schedule, 2 seeds; all: both, into OUT/run1, OUT/run2; "
        "recall-gpu / text-gpu / pilot-gpu: the CUDA-graph runner of experiments/repro_gpu.py (MQAR for the "
        "four families, 3 seeds / Shakespeare for every schedule, 3 seeds / the sizing pilot), into "
        "OUT/<stage>; there --set KEY=JSON goes to that runner "
        "(e.g. --set steps=3000 --set 'kinds=[\"transformer\"]')",
    )
    p.add_argument("--parts", default=None, help="comma list of recall,text (default: as the stage says)")
    p.add_argument(
        "--text-tokens",
        default=str(ROOT / "runs" / "repro_data" / "shakespeare.npz"),
        help="cached token ids of the plays (made on first use)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a setting, e.g. --set train_len=128 --set 'recall_kinds=[\"mamba2\"]'",
    )
    p.add_argument("--from-json", default=None, help="only redraw tables/plots from this results.json")
    args = p.parse_args(argv)
    if args.stage in GPU_STAGES:
        return args, []
    gpu = torch.cuda.is_available() and args.device != "cpu"
    a = dict(
        device=args.device,
        train_len=256,
        d_model=64,
        n_layers=8,
        batch_size=64,
        recall_batch=128,
        train_len_min_frac=0.25,
        lr=3e-3,
        recall_vocab=512,
        mqar_vocab=128,
        mqar_train_len=128,
        mqar_seeds=1,
        recall_seeds=None,
        recall_share=0.5,
        text_vocab=2048,
        name_len=2,
        number_len=3,
        train_queries=8,
        eval_lengths=[128, 256, 512, 1024],
        mqar_lengths=[64, 128, 220],
        eval_rows=256,
        eval_batch=64,
        val_windows=256,
        seeds=3,
        recall_tasks=["phonebook", "mqar"],
        recall_kinds=RECALL_KINDS,
        text_kinds=TEXT_KINDS,
        text=True,
        workers=12 if gpu else 1,
        budget_s=420 if gpu else 3600,
        steps=args.steps,
        calib_steps=8,
        min_steps=50,
        max_steps=3000,
        text_tokens=args.text_tokens,
        triton="auto",
    )
    stages = {
        # what docs/reproduction.md reports (GPU: one H100, 12 workers)
        "run1": dict(
            recall_tasks=["phonebook", "mqar"],
            recall_kinds=RECALL_KINDS,
            seeds=3,
            text=False,
            budget_s=430 if gpu else 7200,
        ),
        "run2": dict(
            recall_tasks=["phonebook"],
            recall_kinds=["transformer", "mamba2", "hybrid", "tm-V7", "tm-V9"],
            recall_seeds=1,
            seeds=2,
            text=True,
            triton="on" if gpu else "auto",
            recall_share=0.5,
            budget_s=400 if gpu else 7200,
        ),
    }
    if args.quick:
        a.update(
            train_len=64,
            d_model=32,
            n_layers=4,
            batch_size=16,
            recall_batch=16,
            train_queries=2,
            mqar_train_len=64,
            seeds=1,
            eval_lengths=[32, 64, 128],
            mqar_lengths=[32, 64, 128],
            eval_rows=32,
            eval_batch=32,
            val_windows=16,
            calib_steps=3,
            min_steps=20,
            max_steps=60,
            recall_tasks=a["recall_tasks"][:1] if a["recall_tasks"] else [],
            recall_kinds=["transformer", "mamba2", "hybrid", "tm-V9"],
            text_kinds=["transformer", "mamba2", "tm-V7", "tm-V9"],
            budget_s=240,
        )
        todo = [("quick", a)]
    else:
        names = ["run1", "run2"] if args.stage == "all" else [args.stage]
        todo = [(n, {**a, **stages[n]}) for n in names]
    out = []
    for name, cfg in todo:
        out.append((name, _override(p, args, cfg)))
    return args, out


def _override(p, args, a):
    if args.parts is not None:
        a["text"] = "text" in args.parts
        if "recall" not in args.parts:
            a["recall_tasks"] = []
    for item in args.set:
        key, _, val = item.partition("=")
        if key not in a:
            p.error(f"--set: unknown setting {key!r}; settings: {', '.join(sorted(a))}")
        a[key] = json.loads(val)
    for k in ("workers", "budget_s", "seeds"):
        if getattr(args, k) is not None:
            a[k] = getattr(args, k)
    return a


def run_gpu_stage(args) -> int:
    """`--stage recall-gpu|text-gpu|pilot-gpu`: launch experiments/repro_gpu.py's plan, then its report."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from repro_gpu import launch
    from repro_gpu_report import report as gpu_report

    over = {}
    for item in args.set:
        key, _, val = item.partition("=")
        over[key] = json.loads(val)
    out = Path(args.out) / args.stage
    plan = args.stage.split("-")[0]
    launch(plan, out, args.workers or 14, args.budget_s or 220, over)
    gpu_report(out)
    return 0


def main(argv=None):
    args, stages = parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    if args.stage in GPU_STAGES and not args.from_json:
        return run_gpu_stage(args)
    if args.from_json:
        report(json.loads(Path(args.from_json).read_text()), root, print)
        return 0
    for name, a in stages:
        out = root if args.quick else root / name
        out.mkdir(parents=True, exist_ok=True)
        logf = open(out / "log.txt", "a")

        def log(msg, logf=logf):
            print(msg, flush=True)
            logf.write(msg + "\n")
            logf.flush()

        if not torch.cuda.is_available() and not args.quick:
            log("note: no GPU here; the numbers in docs/reproduction.md come from one H100 (12 workers)")
        log(
            f"reproduce_transmamba {name}: on {a['device']} (cuda={torch.cuda.is_available()}), "
            f"{a['workers']} workers, budget {a['budget_s']} s"
        )
        results = run_all(a, out, log)
        save(results, a, out)
        report({"args": {k: v for k, v in a.items() if k != "out"}, "results": results}, out, log)
        logf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
