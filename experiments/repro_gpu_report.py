"""Tables and plots from the JSONL logs of `experiments/repro_gpu.py` (one folder of runs).

    python experiments/repro_gpu.py report DIR

Writes DIR/results.json (every run: settings, parameters, steps, training curve, evaluations),
DIR/tables.md (mean ± std over seeds; std is numpy's, ddof 0) and PNG plots: MQAR accuracy against the
number of pairs and against the filler length, MQAR training curves, validation loss per kind and the
schedule-swap matrix for text runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from repro_gpu import SCHEDULES, read_logs, static_len

ORDER = ["transformer", "tm-V9", "tm-V7", "tm-V8", "tm-V1", "tm-V2", "tm-V3", "tm-V4", "tm-V5", "tm-V6",
         "hybrid", "mamba2"]


def _ms(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def _fmt(m, s, n, pct=False):
    if m is None:
        return "—"
    k, d = (100, 1) if pct else (1, 3)
    return f"{m * k:.{d}f} ± {s * k:.{d}f}" + (f" ({n})" if n != 3 else "")


def _kinds(runs):
    ks = {r["job"]["kind"] for r in runs}
    return [k for k in ORDER if k in ks] + sorted(ks - set(ORDER))


def first_step_at(run, level: float):
    """First logged step whose training accuracy (mean over the logging window) reaches `level`."""
    for p in run["train"]:
        if p.get("acc", 0) >= level:
            return p["step"]
    return None


def compact(run) -> dict:
    j = run["job"]
    keep = {k: v for k, v in j.items() if k not in ("deadline", "hard_deadline")}
    return {
        "job": keep,
        "params": run["start"]["params"],
        "pattern": run["start"]["pattern"],
        "d_ff": run["start"].get("d_ff"),
        "transpoints": run["start"].get("transpoints"),
        "gpu": run["start"].get("gpu"),
        "graph": run.get("ready", {}).get("graph"),
        "steps": run.get("trained", {}).get("steps"),
        "truncated": run.get("trained", {}).get("truncated"),
        "steps_per_s": run.get("trained", {}).get("steps_per_s"),
        "train": [{k: p[k] for k in ("step", "loss", "acc") if k in p} for p in run["train"]],
        "eval": [{k: v for k, v in e.items() if k not in ("time", "per_answer")} for e in run["eval"]],
        "complete": "done" in run,
    }


def recall_tables(runs, md, out: Path):
    kinds = _kinds(runs)
    j0 = runs[0]["job"]
    task = j0["task"]

    def acc(kind, pairs, filler, sw="train", key="acc"):
        return [e[key] for r in runs if r["job"]["kind"] == kind for e in r["eval"]
                if e["pairs"] == pairs and e["filler"] == filler and e["schedule"] == sw]

    grid = []
    for r in runs:
        for e in r["eval"]:
            if (e["pairs"], e["filler"]) not in grid:
                grid.append((e["pairs"], e["filler"]))
    by_pairs = sorted({g for g in grid if g[1] == 0})
    by_filler = sorted({g for g in grid if g[0] == j0["pairs_hi"]}, key=lambda g: g[1])
    what = "pairs" if task == "mqar" else f"entries (one-symbol names, {j0.get('number_len')}-digit numbers)"
    md.append(f"### {task}: trained on {j0['pairs_lo']}–{j0['pairs_hi']} {what}, filler {j0['filler_lo']}–"
              f"{j0['filler_hi']} (rows ≤ {static_len(j0)} tokens); {j0['batch']} rows per step, "
              f"lr {j0['lr']}\n")
    md.append("| kind | params | steps | seeds | train acc (last log window) | first step ≥ 50 % train acc |")
    md.append("|---|---|---|---|---|---|")
    for k in kinds:
        rs = [r for r in runs if r["job"]["kind"] == k]
        last = _ms([r["train"][-1]["acc"] for r in rs if r["train"]])
        firsts = [first_step_at(r, 0.5) for r in rs]
        steps = sorted({r.get("trained", {}).get("steps") for r in rs}, key=str)
        md.append(f"| {k} | {rs[0]['start']['params']:,} | {steps} | {len(rs)} | {_fmt(*last, pct=True)} "
                  f"| {firsts} |")
    ref = (j0["pairs_hi"], 0)
    order = sorted(kinds, key=lambda k: -(_ms(acc(k, *ref))[0] or -1))
    md.append(f"\nOrdering at {ref[0]} pairs, no filler (the longest training rows), mean over "
              "seeds, with every seed's accuracy (%):\n")
    for k in order:
        m = _ms(acc(k, *ref))
        seeds = ", ".join(f"{100 * v:.1f}" for v in acc(k, *ref))
        md.append(f"- {k}: {_fmt(*m, pct=True)} — seeds: {seeds}")
    if task == "mqar":
        # which queries are answered: every pair is queried once, so a model can answer later queries by
        # elimination (a value of a pair not yet asked) without looking the key up; the first query cannot
        # use that, and guessing any value of the row scores 1/n there
        md.append("\n**Accuracy by query index** (%, mean over seeds; no filler): first query, last query, "
                  "all queries; `1/n` = picking one of the row's n values at random\n")
        md.append("| kind | " + " | ".join(f"{p} pairs: first / last / all" for p, _ in by_pairs[:3]) + " |")
        md.append("|---|" + "---|" * len(by_pairs[:3]))

        def per(kind, pairs, idx):
            return [e["per_answer"][idx] for r in runs if r["job"]["kind"] == kind for e in r["eval"]
                    if e["pairs"] == pairs and e["filler"] == 0 and e["schedule"] == "train"
                    and e.get("per_answer")]

        for k in kinds:
            cells = [f"{100 * (_ms(per(k, p, 0))[0] or 0):.1f} / {100 * (_ms(per(k, p, -1))[0] or 0):.1f} / "
                     f"{100 * (_ms(acc(k, p, 0))[0] or 0):.1f}" for p, _ in by_pairs[:3]]
            md.append(f"| {k} | " + " | ".join(cells) + " |")
        md.append("| 1/n | " + " | ".join(f"{100 / p:.1f}" for p, _ in by_pairs[:3]) + " |")
    for title, pts in (("number of pairs (no filler)", by_pairs), ("filler tokens", by_filler)):
        if not pts:
            continue
        md.append(f"\n**Answer accuracy (%) by {title}**; columns: pairs/filler (row length); mean ± std "
                  "over seeds ((n) = number of seeds when not 3); TransMamba `scaled` = schedule rescaled to "
                  "the row\n")
        lens = {}
        for r in runs:
            for e in r["eval"]:
                lens[(e["pairs"], e["filler"])] = e["length"]
        md.append("| kind | " + " | ".join(f"{p}/{f} ({lens.get((p, f))})" for p, f in pts) + " |")
        md.append("|---|" + "---|" * len(pts))
        for k in kinds:
            cells = [_fmt(*_ms(acc(k, p, f)), pct=True) for p, f in pts]
            md.append(f"| {k} | " + " | ".join(cells) + " |")
            if k.startswith("tm-"):
                cells = [_fmt(*_ms(acc(k, p, f, "scaled")), pct=True) for p, f in pts]
                md.append(f"| {k} scaled | " + " | ".join(cells) + " |")
    if task == "phonebook" and by_pairs:
        md.append("\n**Digit accuracy (%) by entries** (chance 10 %)\n")
        md.append("| kind | " + " | ".join(f"{p}" for p, _ in by_pairs) + " |")
        md.append("|---|" + "---|" * len(by_pairs))
        for k in kinds:
            cells = [_fmt(*_ms(acc(k, p, f, key="token_acc")), pct=True) for p, f in by_pairs]
            md.append(f"| {k} | " + " | ".join(cells) + " |")
    try:
        _recall_plots(runs, kinds, by_pairs, by_filler, acc, out, task)
    except Exception as err:  # plots must not lose the tables
        md.append(f"\n(plots failed: {err!r})")


def _recall_plots(runs, kinds, by_pairs, by_filler, acc, out: Path, task):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    j0 = runs[0]["job"]
    pb = task == "phonebook"  # no filler: the middle panel shows digit accuracy by entries instead
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4))
    for i, k in enumerate(kinds):
        c = f"C{i % 10}"
        panels = ((axes[0], by_pairs, 0, "acc"), (axes[1], by_pairs if pb else by_filler, 0 if pb else 1,
                                                   "token_acc" if pb else "acc"))
        for ax, pts, xi, key in panels:
            if not pts:
                continue
            xs = [p[xi] for p in pts]
            ms = [_ms(acc(k, p, f, key=key)) for p, f in pts]
            ax.errorbar(xs, [100 * (m[0] if m[0] is not None else np.nan) for m in ms],
                        yerr=[100 * (m[1] or 0) for m in ms], marker="o", capsize=3, c=c, label=k)
            if k.startswith("tm-"):
                ms = [_ms(acc(k, p, f, "scaled", key=key)) for p, f in pts]
                ax.plot(xs, [100 * (m[0] if m[0] is not None else np.nan) for m in ms], ls=":", c=c,
                        label=f"{k} rescaled")
        steps = sorted({p["step"] for r in runs if r["job"]["kind"] == k for p in r["train"]})
        curves = [[next((p["acc"] for p in r["train"] if p["step"] == s), np.nan) for s in steps]
                  for r in runs if r["job"]["kind"] == k]
        if steps:
            axes[2].plot(steps, 100 * np.nanmean(np.array(curves, float), axis=0), c=c, label=k)
    axes[0].axvline(j0["pairs_hi"], ls="--", c="gray", lw=1)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("key-value pairs (dashed: most pairs in training; dotted: chance)")
    axes[0].set_title(f"{task}: accuracy vs pairs (no filler)")
    if pb:
        axes[1].axvline(j0["pairs_hi"], ls="--", c="gray", lw=1)
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("book entries")
        axes[1].set_title("phonebook: digit accuracy vs entries")
        axes[0].set_xlabel("book entries (dashed: most in training; dotted: chance)")
        axes[0].set_title("phonebook: whole-number accuracy vs entries")
    else:
        axes[1].axvline(j0["filler_hi"], ls="--", c="gray", lw=1)
        axes[1].set_xscale("symlog", base=2, linthresh=16)
        axes[1].set_xlim(left=-2)
        axes[1].set_xlabel(f"filler tokens between pairs and queries ({j0['pairs_hi']} pairs)")
        axes[1].set_title(f"{task}: accuracy vs distance")
    axes[2].set_xlabel("training step")
    axes[2].set_title("training accuracy on answer tokens (mean over seeds)")
    from transmamba.data.synthetic import mqar_split

    chance = 100 / mqar_split(j0["vocab"])[1] if not pb else 100 * 0.1 ** j0.get("number_len", 2)
    token_chance = chance if not pb else 10.0
    for ax, ch in zip(axes, (chance, token_chance, token_chance)):
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.axhline(ch, ls=":", c="k", lw=1)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{task}_recall.png", dpi=110)
    plt.close(fig)


def text_tables(runs, md, out: Path):
    kinds = _kinds(runs)

    j0 = runs[0]["job"]
    L = j0["train_len"]

    def vl(kind, sw="train", length=L):
        return [e["val_loss"] for r in runs if r["job"]["kind"] == kind for e in r["eval"]
                if e["schedule"] == sw and e.get("length", L) == length]

    md.append(f"### Shakespeare: validation loss (nats/token), windows of {j0['train_len']} tokens, "
              f"batch {j0['batch']}\n")
    md.append("| kind | params | steps | seeds | val loss | per seed |")
    md.append("|---|---|---|---|---|---|")
    rows = sorted(kinds, key=lambda k: _ms(vl(k))[0] if _ms(vl(k))[0] is not None else 99)
    for k in rows:
        rs = [r for r in runs if r["job"]["kind"] == k]
        per = ", ".join(f"s{r['job']['seed']} {e['val_loss']:.3f}" for r in rs for e in r["eval"]
                        if e["schedule"] == "train" and e.get("length", L) == L)
        steps = sorted({r.get("trained", {}).get("steps") for r in rs}, key=str)
        cells = [f"{rs[0]['start']['params']:,}", str(steps), str(len(rs)), _fmt(*_ms(vl(k))), per]
        md.append(f"| {k} | " + " | ".join(cells) + " |")
    md.append(f"\nAt {4 * L} tokens (4x training; {j0.get('long_windows', 16)} windows): as trained / "
              "TransMamba with the named schedule rescaled to 4x\n")
    md.append(f"| kind | val loss @ {L} | @ {4 * L} as trained | @ {4 * L} rescaled |")
    md.append("|---|---|---|---|")
    for k in rows:
        md.append(f"| {k} | {_fmt(*_ms(vl(k)))} | {_fmt(*_ms(vl(k, 'train', 4 * L)))} | "
                  f"{_fmt(*_ms(vl(k, 'scaled', 4 * L)))} |")
    tms = [k for k in kinds if k.startswith("tm-")]
    evs = SCHEDULES + ["attention", "ssm"]
    mat = np.full((len(tms), len(evs)), np.nan)
    if tms:
        sw_n = j0.get("swap_windows", j0["val_windows"])
        md.append("\nSchedule swap at inference: rows = trained with, columns = evaluated with "
                  f"(mean over seeds; first {sw_n} validation windows)\n")
        md.append("| trained \\ eval | " + " | ".join(evs) + " |")
        md.append("|---|" + "---|" * len(evs))
        for i, k in enumerate(tms):
            for jx, e in enumerate(evs):
                m = _ms(vl(k, e))[0]
                mat[i, jx] = np.nan if m is None else m
            md.append(f"| {k} | " + " | ".join("—" if np.isnan(x) else f"{x:.3f}" for x in mat[i]) + " |")
    try:
        _text_plots(runs, rows, vl, tms, evs, mat, out)
    except Exception as err:
        md.append(f"\n(plots failed: {err!r})")


def _text_plots(runs, kinds, vl, tms, evs, mat, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 4.4))
    ms = [_ms(vl(k)) for k in kinds]
    xs = np.arange(len(kinds))
    ax = axes[0]
    ax.bar(xs, [m[0] for m in ms], yerr=[m[1] for m in ms], capsize=3,
           color=["C1" if k.startswith("tm-") else "C0" for k in kinds])
    for i, k in enumerate(kinds):  # every seed as a dot
        v = vl(k)
        ax.scatter([i] * len(v), v, c="k", s=10, zorder=3)
    every = [v for k in kinds for v in vl(k)]
    lo, hi = min(every), max(every)
    ax.set_ylim(lo - 0.15 * (hi - lo + 0.02), hi + 0.25 * (hi - lo + 0.02))
    ax.set_xticks(xs, kinds, rotation=30)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Shakespeare validation loss (bars: mean ± std; dots: seeds)")
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1]
    for i, k in enumerate(kinds):
        rs = [r for r in runs if r["job"]["kind"] == k and r["train"]]
        if rs:
            c = np.array([[p["step"], p["loss"]] for p in rs[0]["train"]])
            ax.plot(c[:, 0], c[:, 1], c=f"C{i % 10}", ls="-" if k.startswith("tm-") else "--", label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over 100 steps)")
    ax.set_title("training curves (seed 0)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "text_val_loss.png", dpi=110)
    plt.close(fig)
    if tms and np.isfinite(mat).any():
        fig, ax = plt.subplots(figsize=(10, 5))
        vmax = np.nanpercentile(mat, 85)
        im = ax.imshow(mat, cmap="viridis_r", vmin=np.nanmin(mat), vmax=vmax)
        for i in range(mat.shape[0]):
            for jx in range(mat.shape[1]):
                if np.isfinite(mat[i, jx]):
                    light = mat[i, jx] < (im.norm.vmin + im.norm.vmax) / 2
                    ax.text(jx, i, f"{mat[i, jx]:.2f}", ha="center", va="center", fontsize=7,
                            c="k" if light else "w")
        ax.set_xticks(range(len(evs)), evs, rotation=30)
        ax.set_yticks(range(len(tms)), tms)
        ax.set_xlabel("schedule at inference")
        ax.set_ylabel("schedule in training")
        ax.set_title("validation loss under an inference-time schedule swap (mean over seeds)")
        fig.colorbar(im)
        fig.tight_layout()
        fig.savefig(out / "text_schedule_swap.png", dpi=110)
        plt.close(fig)


def report(folder: Path, out: Path | None = None) -> None:
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    runs = read_logs(folder)
    md = [f"Runs: {len(runs)} (from {folder.name}); GPU: {runs[0]['start'].get('gpu') if runs else None}; "
          f"CUDA-graph steps: {sum(bool(r.get('ready', {}).get('graph')) for r in runs)} of {len(runs)}; "
          f"incomplete: {[r['job']['name'] for r in runs if 'done' not in r]}\n"]
    models = {}
    for r in runs:
        st = r["start"]
        models.setdefault((r["job"]["task"], r["job"]["kind"]),
                          (st["pattern"], st.get("d_ff"), st["params"], st.get("transpoints")))
    md.append("| task | kind | pattern | MLP width | parameters | TransPoints (trained) |")
    md.append("|---|---|---|---|---|---|")
    for (task, kind), (pat, dff, n, tp) in sorted(models.items()):
        md.append(f"| {task} | {kind} | `{pat}` | {dff} | {n:,} | {tp or ''} |")
    md.append("")
    for task in ("mqar", "phonebook"):
        rs = [r for r in runs if r["job"]["task"] == task and r["eval"]]
        if rs:
            recall_tables(rs, md, out)
    rs = [r for r in runs if r["job"]["task"] == "text" and r["eval"]]
    if rs:
        text_tables(rs, md, out)
    (out / "tables.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps([compact(r) for r in runs], indent=1))
    print(f"wrote {out}/tables.md, results.json and plots")
