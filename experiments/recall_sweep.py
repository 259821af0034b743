"""TransMamba's recall claim by Zoology's protocol: MQAR accuracy vs width per family, and PhoneBook.

    python experiments/recall_sweep.py --out OUT                 # full sweep, 480 s on one H200
    python experiments/recall_sweep.py --out OUT --quick         # seq 256 / 16 pairs only, 240 s
    python experiments/recall_sweep.py --out OUT --smoke         # CPU, tiny, < 30 s (a check of the script)

Everything runs in one process, in this order (each stage writes JSON lines to OUT/recall_sweep.jsonl as
it goes, so a run cut short still leaves every finished point):

1. gate: the attention model at Zoology's easiest setting (seq 64, 4 pairs, d_model 64). Zoology's
   attention reaches ~100 % there; the run records whether ours passes 95 % before any comparison.
2. lr: every model at d_model 128 on the first MQAR setting, one seed, at each learning rate of --lrs
   (Zoology sweeps logspace(-4, -2, 4) and reports the best); the best per model is used below.
3. main: MQAR accuracy for every (setting, width, model, seed), seed-major (all points of seed 0 first),
   so a shortened run still has a whole figure. TransMamba models are also scored with their schedule
   swapped at evaluation (layer order reversed: attention-first <-> SSM-first), as pure attention and as
   pure SSM.
4. phonebook: the same families on a PhoneBook small enough for 2-layer models to learn
   (`transmamba.data.synthetic.phonebook`), 3 seeds, one learning rate (--phonebook-lr) for all.

Time: `--budget-s` is the wall clock of the whole call. Before each run its step count is set from the
measured time per step of that model and the budget left divided by the runs left (at most --max-steps,
at least --min-steps); runs that reach 99 % early hand their time on. The step count of every run is in
its JSON line. Then `report` writes OUT/recall_sweep.md (tables) and OUT/mqar_vs_width.png (Zoology's
Figure 2 format: one panel per setting, accuracy vs d_model, one line per model, mean and min-max over
seeds).

Full plan: MQAR at (seq_len, pairs) = (256, 16) and (1024, 128), d_model 64/128/256/512, 5 models, 3
seeds, plus PhoneBook; --settings / --widths / --models / --seeds / --budget-s change it.

Models (all `transmamba.CausalLM`, 2 mixer layers, no MLP, as Zoology's Figure 2; see
`transmamba.eval.mqar.ModelSpec`): attention `**` (RoPE, one head, q/k/v biases), mamba2 `MM`, hybrid
`M*`, tm-attn `TT` with both TransPoints past the row (attention path only), tm-fall `TT` with
TransPoints at [3T/4, T/4] and tm-rise at [T/4, 3T/4] (inside the row: queries late in the row use the
SSM; tm-fall's swap at evaluation is tm-rise's schedule). PhoneBook models: 2 mixer layers, each followed
by a SwiGLU MLP, 4 attention heads (a phone number sits 2-3 tokens after its name, so the first layers need
heads at several offsets).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from transmamba.eval import mqar

MODELS = {
    "attention": dict(family="attention"),
    "mamba2": dict(family="mamba2"),
    "hybrid": dict(family="hybrid"),
    "tm-attn": dict(family="transmamba", transpoints=(1.0, 1.0)),
    "tm-rise": dict(family="transmamba", transpoints=(0.25, 0.75)),
    "tm-fall": dict(family="transmamba", transpoints=(0.75, 0.25)),
}
STAGES = ("gate", "lr", "main", "phonebook")
SWAPS = {"trained": None, "swapped": "reverse", "all-attention": (1.0, 1.0), "all-ssm": (0.0, 0.0)}

PLANS = {
    "full": dict(settings=((256, 16), (1024, 128)), widths=(64, 128, 256, 512),
                 models=("attention", "mamba2", "hybrid", "tm-attn", "tm-fall"), seeds=(0, 1, 2),
                 lrs=mqar.ZOOLOGY_LRS[1:], test_rows=1000, phonebook=True, budget_s=480.0, max_steps=4000,
                 min_steps=100, gate_steps=2000),
    "quick": dict(settings=((256, 16),), widths=(64, 128, 256, 512),
                  models=("attention", "mamba2", "hybrid", "tm-attn", "tm-fall"), seeds=(0, 1, 2),
                  lrs=mqar.ZOOLOGY_LRS[1:], test_rows=1000, phonebook=False, budget_s=240.0,
                  max_steps=3000, min_steps=100, gate_steps=1500),
    "smoke": dict(settings=((32, 4),), widths=(16, 32), models=tuple(MODELS), seeds=(0,), lrs=(3e-3,),
                  test_rows=32, phonebook=True, budget_s=20.0, max_steps=3, min_steps=2, gate_steps=3),
}
SMOKE_VOCAB = 128
GATE = (64, 4, 64)  # seq_len, n_pairs, d_model: Zoology's easiest point
PHONEBOOK_WEIGHT = 3  # a PhoneBook run gets three MQAR runs' time: it leaves chance later (a phase change)
PHONEBOOK = dict(n_entries=8, name_len=1, number_len=2, n_queries=4, vocab_size=256, n_layers=2, d_model=128,
                 n_heads=4)


# ----------------------------------------------------------------------------------------------- running


class Sweep:
    def __init__(self, args, plan: dict):
        self.args, self.plan = args, plan
        self.device = torch.device(args.device if args.device != "auto" else
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = self.device.type == "cuda"
        self.dtype = {"bf16": torch.bfloat16, "fp32": None}[args.dtype] if cuda else None
        self.vocab = SMOKE_VOCAB if args.smoke else mqar.ZOOLOGY_VOCAB
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "recall_sweep.jsonl"
        self.t0 = time.perf_counter()
        self.budget = float(args.budget_s if args.budget_s is not None else plan["budget_s"])
        self.step_time: dict[tuple, float] = {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def write(self, row: dict) -> None:
        row = {**row, "elapsed_s": round(time.perf_counter() - self.t0, 2)}
        with self.log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("curve",)}), flush=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def spec(self, name: str, d_model: int, n_layers: int = 2, mlp: bool = False,
             n_heads: int = 1) -> mqar.ModelSpec:
        return mqar.ModelSpec(d_model=d_model, n_layers=n_layers, mlp=mlp, name=name, n_heads=n_heads,
                              **{**MODELS[name], "transpoints": _points(MODELS[name], n_layers)})

    def measure(self, model, make_batch, key) -> float:
        """Seconds per training step of `model` (2 warm-up steps, 3 timed; a throwaway optimiser)."""
        if key in self.step_time:
            return self.step_time[key]
        gen = torch.Generator(device=self.device)
        gen.manual_seed(12345)
        params = [p for p in model.parameters()]
        saved = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=0.0)
        times = []
        for i in range(5):
            self.sync()
            t = time.perf_counter()
            batch = make_batch(gen)
            with mqar._autocast(self.device, self.dtype):
                logits, tgt = mqar.answer_logits(model, batch)
                loss = torch.nn.functional.cross_entropy(logits.float(), tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.sync()
            if i >= 2:
                times.append(time.perf_counter() - t)
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        self.step_time[key] = sorted(times)[1]
        return self.step_time[key]

    def steps_for(self, sec_per_step: float, runs_left: float, cap: int | None = None,
                  weight: float = 1.0) -> int:
        """Steps that fit in `weight` shares of the time left, `runs_left` shares in all."""
        share = max(0.0, self.left()) * weight / max(1.0, runs_left)
        hi = cap or self.plan["max_steps"]
        return int(min(hi, max(self.plan["min_steps"], share / max(sec_per_step, 1e-6))))

    def run_mqar(self, stage: str, name: str, d_model: int, seq_len: int, n_pairs: int, lr: float,
                 seed: int, runs_left: int, cap: int | None = None) -> dict:
        spec = self.spec(name, d_model)
        model = mqar.build_model(spec, vocab_size=self.vocab, seq_len=seq_len, seed=seed).to(self.device)
        bs = 16 if self.args.smoke else mqar.zoology_batch_size(seq_len)
        make = mqar.mqar_stream(seq_len, n_pairs, bs, vocab_size=self.vocab, device=self.device)
        sps = self.measure(model, make, (name, d_model, seq_len))
        steps = self.steps_for(sps, runs_left, cap)
        res = mqar.train(model, make, steps=steps, lr=lr, seed=seed, device=self.device,
                         autocast_dtype=self.dtype, log_every=min(50, steps))
        tests = mqar.test_batches(self.plan["test_rows"], seq_len, n_pairs, vocab_size=self.vocab,
                                  device=self.device, batch_size=250 if seq_len <= 512 else 100)
        ev = mqar.evaluate(model, tests, autocast_dtype=self.dtype)
        row = {"stage": stage, "task": "mqar", "model": name, "family": spec.family, "d_model": d_model,
               "seq_len": seq_len, "n_pairs": n_pairs, "lr": lr, "seed": seed, "batch_size": bs,
               "steps": res.steps, "steps_planned": steps, "sec_per_step": round(sps, 5),
               "train_seconds": round(res.seconds, 2), "stopped_early": res.stopped_early,
               "train_accuracy": res.train_accuracy, "test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
               "params": model.num_parameters(), "transpoints": model.config.transpoints,
               "curve": res.curve}
        if spec.family == "transmamba" and stage == "main":
            row["schedule_eval"] = self.swap_eval(model, spec, tests, seq_len)
        self.write(row)
        del model
        return row

    def swap_eval(self, model, spec, tests, seq_len) -> dict:
        out = {}
        trained = list(spec.transpoints)
        for key, sched in SWAPS.items():
            fr = trained if sched is None else (trained[::-1] if sched == "reverse" else list(sched))
            mqar.set_fractions(model, fr, seq_len)
            out[key] = {"fractions": fr, "accuracy": mqar.evaluate(model, tests, autocast_dtype=self.dtype)
                        ["accuracy"]}
        mqar.set_fractions(model, trained, seq_len)
        return out

    # ------------------------------------------------------------------------------------------- stages
    def gate(self) -> None:
        seq, n, d = (32, 4, 16) if self.args.smoke else GATE
        lr = 3e-3
        self.run_mqar("gate", "attention", d, seq, n, lr, 0, runs_left=1, cap=self.plan["gate_steps"])

    def lr_sweep(self) -> dict[str, float]:
        p = self.plan
        seq, n = p["settings"][0]
        d = p["widths"][min(1, len(p["widths"]) - 1)]
        lrs = self.args.lrs or p["lrs"]
        best: dict[str, tuple] = {}
        runs = len(p["models"]) * len(lrs)
        main_runs = self.main_runs()
        for name in p["models"]:
            for lr in lrs:
                # the LR sweep gets a share as if it were main runs: runs_left counts everything still to do
                try:
                    row = self.run_mqar("lr", name, d, seq, n, lr, 0, runs_left=runs + main_runs)
                except Exception as err:  # e.g. an op that fails under bf16: record it, keep sweeping
                    self.write({"stage": "lr", "model": name, "lr": lr, "error": repr(err)[:400]})
                    continue
                finally:
                    runs -= 1
                score = (row["test_accuracy"], -row["test_loss"])
                if name not in best or score > best[name][0]:
                    best[name] = (score, lr)
        chosen = {k: v[1] for k, v in best.items()}
        self.write({"stage": "lr-chosen", "lrs": chosen})
        return chosen

    def main_runs(self) -> int:
        p = self.plan
        return len(p["settings"]) * len(p["widths"]) * len(p["models"]) * len(p["seeds"]) + (
            PHONEBOOK_WEIGHT * len(p["seeds"]) * len(p["models"]) if self.runs("phonebook") else 0)

    def runs(self, stage: str) -> bool:
        """Whether `stage` is part of this call (--stages; PhoneBook also needs the plan to include it)."""
        return stage in self.args.stages and (stage != "phonebook" or self.plan["phonebook"])

    def main(self, lrs: dict[str, float]) -> None:
        p = self.plan
        left = self.main_runs()
        for seed in p["seeds"]:
            for seq, n in p["settings"]:
                for d in p["widths"]:
                    for name in p["models"]:
                        if self.left() <= 0:
                            self.write({"stage": "main", "skipped": [name, d, seq, n, seed],
                                        "why": "budget spent"})
                            left -= 1
                            continue
                        try:
                            self.run_mqar("main", name, d, seq, n, lrs[name], seed, runs_left=left)
                        except Exception as err:  # one failing point must not end the sweep
                            self.write({"stage": "main", "model": name, "d_model": d, "seq_len": seq,
                                        "n_pairs": n, "seed": seed, "error": repr(err)[:400]})
                        left -= 1

    def phonebook(self, lrs: dict[str, float]) -> None:
        from transmamba.data.synthetic import phonebook

        pb = dict(PHONEBOOK, n_layers=self.args.phonebook_layers, d_model=self.args.phonebook_width)
        if self.args.smoke:
            pb.update(n_entries=4, n_queries=2, vocab_size=64, n_layers=2, d_model=16, n_heads=2)
        seeds = (0,) if self.args.smoke else self.plan["seeds"]
        left = PHONEBOOK_WEIGHT * len(self.plan["models"]) * len(seeds)
        bs = 8 if self.args.smoke else 128
        for seed in seeds:
            for name in self.plan["models"]:
                spec = self.spec(name, pb["d_model"], n_layers=pb["n_layers"], mlp=True,
                                 n_heads=pb["n_heads"])
                row_len = 1 + pb["n_entries"] * (pb["name_len"] + pb["number_len"] + 2) + pb["n_queries"] * (
                    pb["name_len"] + pb["number_len"] + 3)
                model = mqar.build_model(spec, vocab_size=pb["vocab_size"], seq_len=row_len,
                                         seed=seed).to(self.device)
                rng = np.random.default_rng(seed)

                def make(gen, rng=rng):
                    b = phonebook(bs, pb["n_entries"], name_len=pb["name_len"], number_len=pb["number_len"],
                                  n_queries=pb["n_queries"], vocab_size=pb["vocab_size"], seed=rng)
                    return mqar.MQARBatch(b.input_ids.to(self.device), b.labels.to(self.device))

                try:
                    sps = self.measure(model, make, ("pb", name))
                    steps = self.steps_for(sps, left, weight=PHONEBOOK_WEIGHT)
                    res = mqar.train(model, make, steps=steps, lr=self.args.phonebook_lr, seed=seed,
                                     device=self.device, autocast_dtype=self.dtype, log_every=min(50, steps))
                    test = phonebook(self.plan["test_rows"], pb["n_entries"], name_len=pb["name_len"],
                                     number_len=pb["number_len"], n_queries=pb["n_queries"],
                                     vocab_size=pb["vocab_size"], seed=99_999)
                    tb = mqar.MQARBatch(test.input_ids.to(self.device), test.labels.to(self.device))
                    ev = mqar.evaluate(model, [tb], autocast_dtype=self.dtype)
                    exact, by_digit = _number_scores(model, tb, pb["number_len"], self.dtype)
                    e_len = pb["name_len"] + pb["number_len"] + 2
                    book = test.input_ids[:, 1:1 + pb["n_entries"] * e_len].reshape(
                        len(test.input_ids), pb["n_entries"], e_len)[:, :, pb["name_len"] + 1:-1]
                    baseline = book_mode_baseline(book.numpy(), test.meta["answer_entry"].numpy())
                    self.write({"stage": "phonebook", "task": "phonebook", "model": name,
                                "family": spec.family, **pb, "seed": seed, "lr": self.args.phonebook_lr,
                                "steps": res.steps, "sec_per_step": round(sps, 5),
                                "train_accuracy": res.train_accuracy, "digit_accuracy": ev["accuracy"],
                                "number_exact_match": exact, "digit_accuracy_by_position": by_digit,
                                "book_mode_digit_accuracy": baseline, "chance_digit": 0.1,
                                "chance_number": 0.1 ** pb["number_len"], "curve": res.curve})
                except Exception as err:
                    self.write({"stage": "phonebook", "model": name, "seed": seed, "error": repr(err)[:400]})
                left -= PHONEBOOK_WEIGHT
                del model


def _points(model_kw: dict, n_layers: int):
    tp = model_kw.get("transpoints")
    if tp is None or len(tp) == n_layers:
        return tp
    return tuple(tp[i * len(tp) // n_layers] for i in range(n_layers))  # stretch a 2-layer schedule


@torch.no_grad()
def _number_scores(model, batch, number_len: int, dtype) -> tuple[float, list[float]]:
    """(fraction of queried numbers whose every digit is predicted right, accuracy per digit position),
    teacher-forced."""
    model.eval()
    with mqar._autocast(batch.input_ids.device, dtype):
        h = mqar.hidden_states(model, batch.input_ids)
        pred = model.lm_head(h).argmax(-1)  # (b, t)
    model.train()
    tgt = batch.labels[:, 1:]
    ok = (pred[:, :-1] == tgt) | (tgt == -100)
    mask = tgt != -100
    # answers are runs of number_len consecutive labelled positions
    idx = mask.nonzero()
    per = ok[idx[:, 0], idx[:, 1]].view(-1, number_len)
    return float(per.all(dim=1).float().mean()), [float(v) for v in per.float().mean(0)]


def book_mode_baseline(number_digits: np.ndarray, answer_entry: np.ndarray) -> float:
    """Digit accuracy of the best answer that ignores the queried name: for each digit position, the digit
    most frequent at that position in the row's book (ties split evenly). number_digits (b, n_entries,
    number_len); answer_entry (b, n_queries). A model at this level has learnt which digits the book holds,
    not which entry the query names."""
    b, n_entries, number_len = number_digits.shape
    total = 0.0
    for pos in range(number_len):
        d = number_digits[:, :, pos]  # (b, n_entries)
        counts = np.stack([(d == v).sum(1) for v in range(int(d.max()) + 1)], axis=1)  # (b, V)
        top = counts.max(1, keepdims=True)
        ties = (counts == top).sum(1)  # (b,)
        ans = np.take_along_axis(d, answer_entry, axis=1)  # (b, n_queries)
        hit = np.take_along_axis(counts, ans, axis=1) == top  # (b, n_queries)
        total += float((hit / ties[:, None]).mean())
    return total / number_len


# ----------------------------------------------------------------------------------------------- report


def load_rows(out: Path) -> list[dict]:
    path = out / "recall_sweep.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / len(values))
    return m, sd, min(values), max(values)


def report(out: Path) -> str:
    """Tables (markdown) and the accuracy-vs-width figure from OUT/recall_sweep.jsonl."""
    rows = load_rows(out)
    lines = ["# Recall sweep (Zoology MQAR, PhoneBook)", ""]
    for r in rows:
        if r.get("stage") == "gate":
            ok = "PASS" if r["test_accuracy"] >= 0.95 else "FAIL"
            lines += [f"Gate (attention, seq {r['seq_len']}, {r['n_pairs']} pairs, d_model {r['d_model']}): "
                      f"test accuracy {100 * r['test_accuracy']:.1f} % after {r['steps']} steps: {ok} "
                      "(Zoology: ~100 %; needed >= 95 %)", ""]
    chosen = [r["lrs"] for r in rows if r.get("stage") == "lr-chosen"]
    if chosen:
        lines += ["Learning rates chosen (best test accuracy at d_model 128, first setting, seed 0): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in chosen[-1].items()), ""]
    fixed: dict[str, float] = {}
    for r in rows:
        if r.get("stage") == "lr-fixed":
            fixed.update(r["lrs"])
    if fixed and len({r["lr"] for r in rows if r.get("stage") == "main" and "lr" in r}) == 1:
        used = ", ".join(f"{k} {v:.1e}" for k, v in fixed.items())
        lines += [f"Learning rates fixed (no sweep): {used}", ""]
    lr_rows = [r for r in rows if r.get("stage") == "lr" and "test_accuracy" in r]
    if lr_rows:
        all_lrs = sorted({r["lr"] for r in lr_rows})
        lines += ["| model | " + " | ".join(f"lr {lr:.1e}" for lr in all_lrs) + " |",
                  "|---|" + "---|" * len(all_lrs)]
        for name in dict.fromkeys(r["model"] for r in lr_rows):
            cells = []
            for lr in sorted({r["lr"] for r in lr_rows}):
                hit = [r for r in lr_rows if r["model"] == name and r["lr"] == lr]
                cells.append(f"{100 * hit[0]['test_accuracy']:.1f}" if hit else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    every = [r for r in rows if r.get("stage") == "main" and "test_accuracy" in r]
    best = best_lrs(every)
    main = [r for r in every if best[(r["seq_len"], r["n_pairs"], r["model"])] == r["lr"]]
    settings = sorted({(r["seq_len"], r["n_pairs"]) for r in main})
    for seq, n in settings:
        sub = [r for r in main if (r["seq_len"], r["n_pairs"]) == (seq, n)]
        widths = sorted({r["d_model"] for r in sub})
        lines += lr_lines([r for r in every if (r["seq_len"], r["n_pairs"]) == (seq, n)], best)
        used = ", ".join(f"{m} {lr:.1e}" for (q, k, m), lr in best.items() if (q, k) == (seq, n))
        lines += [f"Learning rate per model (the best of its sweep): {used}", ""]
        lines += [f"## MQAR, seq_len {seq}, {n} pairs: test accuracy % (mean ± sd over seeds [min, max], n)",
                  "",
                  "| model | " + " | ".join(f"d {w}" for w in widths) + " | steps (median) |",
                  "|---|" + "---|" * (len(widths) + 1)]
        for name in dict.fromkeys(r["model"] for r in sub):
            cells = []
            for w in widths:
                acc = [100 * r["test_accuracy"] for r in sub if r["model"] == name and r["d_model"] == w]
                if acc:
                    m, sd, lo, hi = _stats(acc)
                    cells.append(f"{m:.1f} ± {sd:.1f} [{lo:.1f}, {hi:.1f}] ({len(acc)})")
                else:
                    cells.append("-")
            st = sorted(r["steps"] for r in sub if r["model"] == name)
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {st[len(st) // 2]} |")
        lines.append("")
        lines += ordering_lines(sub, widths)
        swaps = [r for r in sub if "schedule_eval" in r]
        if swaps:
            lines += [f"TransMamba schedule swapped at evaluation (seq {seq}, {n} pairs; mean accuracy % "
                      "over widths and seeds):", "", "| trained | " + " | ".join(SWAPS) + " |",
                      "|---|" + "---|" * len(SWAPS)]
            for name in dict.fromkeys(r["model"] for r in swaps):
                cells = []
                for key in SWAPS:
                    acc = [100 * r["schedule_eval"][key]["accuracy"] for r in swaps if r["model"] == name]
                    cells.append(f"{sum(acc) / len(acc):.1f}")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    pb = [r for r in rows if r.get("stage") == "phonebook" and "digit_accuracy" in r]
    for conf in dict.fromkeys((r["n_layers"], r["d_model"], r["lr"]) for r in pb):
        sub_pb = [r for r in pb if (r["n_layers"], r["d_model"], r["lr"]) == conf]
        p0 = sub_pb[0]
        lines += [f"## PhoneBook ({p0['n_entries']} entries, names of {p0['name_len']}, numbers of "
                  f"{p0['number_len']} digits, {p0['n_layers']} layers + MLP, d_model {p0['d_model']}, "
                  f"lr {p0['lr']:g})", "",
                  "| model | digit accuracy % | by digit position % | number exact match % | seeds | steps |",
                  "|---|---|---|---|---|---|"]
        for name in dict.fromkeys(r["model"] for r in sub_pb):
            sub = [r for r in sub_pb if r["model"] == name]
            m1, s1, _, _ = _stats([100 * r["digit_accuracy"] for r in sub])
            m2, s2, _, _ = _stats([100 * r["number_exact_match"] for r in sub])
            pos = [r["digit_accuracy_by_position"] for r in sub if "digit_accuracy_by_position" in r]
            by_pos = " / ".join(f"{100 * sum(v) / len(v):.1f}" for v in zip(*pos)) if pos else "–"
            lines.append(f"| {name} | {m1:.1f} ± {s1:.1f} | {by_pos} | {m2:.1f} ± {s2:.1f} | {len(sub)} | "
                         f"{sorted(r['steps'] for r in sub)[len(sub) // 2]} |")
        base = [r["book_mode_digit_accuracy"] for r in sub_pb if "book_mode_digit_accuracy" in r]
        if base:
            lines.append(f"\nChance 10 % per digit; answering with the digit most frequent at that position "
                         f"in the book, whatever the name, scores {100 * base[0]:.1f} %.")
        lines.append("")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["Errors:", ""]
        lines += [f"- {r.get('stage')} {r.get('model')}: {r['error']}" for r in errors] + [""]
    text = "\n".join(lines)
    (out / "recall_sweep.md").write_text(text)
    if main:
        plot(main, out / "mqar_vs_width.png")
    return text


def best_lrs(main: list[dict]) -> dict[tuple, float]:
    """(seq_len, n_pairs, model) -> the learning rate with the highest mean accuracy over the model's widths
    (seed 0 where there are several), as Zoology picks per model; only learning rates run at every width
    of the model compete (others are extra points in the table), unless none is."""
    by: dict[tuple, dict[float, dict[int, list[float]]]] = {}
    for r in main:
        by.setdefault((r["seq_len"], r["n_pairs"], r["model"]), {}).setdefault(r["lr"], {}).setdefault(
            r["d_model"], []).append((r["seed"], r["test_accuracy"]))
    out = {}
    for key, lrs in by.items():
        widths = set().union(*(set(w) for w in lrs.values()))
        full = [lr for lr, w in lrs.items() if set(w) == widths] or list(lrs)
        common = set.intersection(*(set(lrs[lr]) for lr in full))

        def score(lr, lrs=lrs, common=common):
            accs = []
            for w in common:
                seeded = dict(lrs[lr][w])
                accs.append(seeded.get(0, sum(seeded.values()) / len(seeded)))
            return sum(accs) / max(1, len(accs))

        out[key] = max(full, key=score)
    return out


def lr_lines(sub: list[dict], best: dict[tuple, float]) -> list[str]:
    """Accuracy by learning rate and width (mean over seeds, their count), one row per (model, lr)."""
    widths = sorted({r["d_model"] for r in sub})
    seq, n = sub[0]["seq_len"], sub[0]["n_pairs"]
    out = [f"### Learning rates, seq_len {seq}, {n} pairs: test accuracy % (mean over seeds, n); * = chosen",
           "", "| model | lr | " + " | ".join(f"d {w}" for w in widths) + " |",
           "|---|---|" + "---|" * len(widths)]
    for name in dict.fromkeys(r["model"] for r in sub):
        for lr in sorted({r["lr"] for r in sub if r["model"] == name}):
            cells = []
            for w in widths:
                acc = [100 * r["test_accuracy"] for r in sub
                       if r["model"] == name and r["lr"] == lr and r["d_model"] == w]
                cells.append(f"{sum(acc) / len(acc):.1f} ({len(acc)})" if acc else "-")
            mark = " *" if best[(seq, n, name)] == lr else ""
            out.append(f"| {name} | {lr:.1e}{mark} | " + " | ".join(cells) + " |")
    return out + [""]


def ordering_lines(sub: list[dict], widths: list[int]) -> list[str]:
    """The family ordering of one setting (mean accuracy over widths and seeds) and, per width, whether
    each TransMamba model matches attention (seed ranges overlap) or by how much it differs."""
    acc = {}
    for r in sub:
        acc.setdefault(r["model"], {}).setdefault(r["d_model"], []).append(100 * r["test_accuracy"])
    means = {m: sum(sum(v) for v in by_w.values()) / sum(len(v) for v in by_w.values())
             for m, by_w in acc.items()}
    order = sorted(means, key=lambda m: -means[m])
    out = ["Ordering (mean over widths and seeds): " + " > ".join(f"{m} {means[m]:.1f}" for m in order), ""]
    if "attention" in acc:
        for m in [m for m in order if m.startswith("tm-")]:
            cells = []
            for w in widths:
                a, t = acc["attention"].get(w), acc[m].get(w)
                if not a or not t:
                    continue
                overlap = min(t) <= max(a) and min(a) <= max(t)
                d = sum(t) / len(t) - sum(a) / len(a)
                cells.append(f"d {w}: {d:+.1f}" + (" (ranges overlap)" if overlap else ""))
            out += [f"{m} minus attention, points: " + "; ".join(cells), ""]
    return out


def plot(main: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(r["seq_len"], r["n_pairs"]) for r in main})
    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.4), squeeze=False)
    for ax, (seq, n) in zip(axes[0], settings):
        sub = [r for r in main if (r["seq_len"], r["n_pairs"]) == (seq, n)]
        for name in dict.fromkeys(r["model"] for r in sub):
            widths = sorted({r["d_model"] for r in sub if r["model"] == name})
            stats = [_stats([r["test_accuracy"] for r in sub if r["model"] == name and r["d_model"] == w])
                     for w in widths]
            mean = [s[0] for s in stats]
            ax.plot(widths, mean, marker="o", label=name)
            ax.fill_between(widths, [s[2] for s in stats], [s[3] for s in stats], alpha=0.15)
        ax.set_xscale("log", base=2)
        ticks = sorted({r["d_model"] for r in sub})
        ax.set_xticks(ticks, [str(w) for w in ticks])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"seq {seq}, {n} KV pairs")
        ax.set_xlabel("model dimension")
    axes[0][0].set_ylabel("MQAR accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (recall_sweep.jsonl, .md, mqar_vs_width.png)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="one MQAR setting (seq 256, 16 pairs), no PhoneBook, 240 s")
    mode.add_argument("--smoke", action="store_true", help="CPU, tiny models and rows, seconds")
    mode.add_argument("--report", action="store_true", help="only rebuild the report from OUT's jsonl")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock seconds for the whole call (default: full 480, quick 240, smoke 20)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                    help="autocast dtype on CUDA (CPU always runs fp32)")
    ap.add_argument("--lrs", type=float, nargs="+", default=None,
                    help="learning rates of the LR sweep (default: Zoology's 4.6e-4 2.2e-3 1e-2)")
    ap.add_argument("--models", nargs="+", default=None, choices=tuple(MODELS), help="models to run")
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="d_model values")
    ap.add_argument("--settings", nargs="+", default=None, metavar="SEQ:PAIRS",
                    help="MQAR settings, e.g. 256:16 512:64 1024:128")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                    help="stages to run; without 'lr' every model trains at the first --lrs value. Several "
                         "calls with disjoint --models/--seeds/--stages can share one GPU side by side; "
                         "concatenate their jsonl files into one folder and run --report")
    ap.add_argument("--phonebook-lr", type=float, default=1e-3,
                    help="learning rate of every PhoneBook run (default 1e-3: on the CPU it beat 3e-3)")
    ap.add_argument("--phonebook-layers", type=int, default=PHONEBOOK["n_layers"],
                    help="mixer layers of the PhoneBook models (each followed by an MLP; TransMamba "
                         "schedules are stretched over them)")
    ap.add_argument("--phonebook-width", type=int, default=PHONEBOOK["d_model"],
                    help="d_model of the PhoneBook models")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(report(out))
        return 0
    plan = dict(PLANS["smoke" if args.smoke else "quick" if args.quick else "full"])
    if args.models:
        plan["models"] = tuple(args.models)
    if args.widths:
        plan["widths"] = tuple(args.widths)
    if args.seeds:
        plan["seeds"] = tuple(args.seeds)
    if args.settings:
        try:
            plan["settings"] = tuple(tuple(int(x) for x in s.split(":")) for s in args.settings)
        except ValueError:
            ap.error(f"--settings: expected SEQ:PAIRS like 256:16, got {args.settings}")
    vocab = SMOKE_VOCAB if args.smoke else mqar.ZOOLOGY_VOCAB
    for seq, n in plan["settings"]:
        try:
            mqar.check_mqar(seq, n, vocab)
        except ValueError as err:
            ap.error(str(err))
    if args.smoke:
        torch.set_num_threads(1)
    sweep = Sweep(args, plan)
    (out / "recall_sweep.jsonl").unlink(missing_ok=True)
    sweep.write({"stage": "plan", "device": str(sweep.device), "dtype": args.dtype,
                 "budget_s": sweep.budget, **{k: v for k, v in plan.items() if k != "budget_s"},
                 "gpu": torch.cuda.get_device_name(0) if sweep.device.type == "cuda" else None})
    if sweep.runs("gate"):
        sweep.gate()
    if sweep.runs("lr"):
        lrs = sweep.lr_sweep()
    else:
        fixed = (args.lrs or plan["lrs"])[0]
        lrs = {name: fixed for name in plan["models"]}
        if sweep.runs("main"):  # (PhoneBook has its own --phonebook-lr)
            sweep.write({"stage": "lr-fixed", "lrs": lrs})
    if sweep.runs("main"):
        sweep.main(lrs)
    if sweep.runs("phonebook"):
        sweep.phonebook(lrs)
    sweep.write({"stage": "done", "seconds": round(time.perf_counter() - sweep.t0, 1)})
    print(report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


