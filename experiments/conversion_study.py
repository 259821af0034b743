"""Transformer -> TransMamba at small scale: convert, distil, compare with TransMamba from scratch, plan.

    python experiments/conversion_study.py --out OUT            # GPU: the docs/conversion.md numbers
    python experiments/conversion_study.py --out OUT --tiny     # CPU smoke run (minutes)

One process: (1) train a '*-' x 4 Transformer teacher on the bundled Shakespeare; (2) for each seed, convert
it (every TransPoint at the row length L, so the student starts equal to the teacher), distil for N steps
while the TransPoints come down to a target schedule with TransPoints inside the row; train the same
architecture from random initialisation with cross entropy for the same N steps on the same batches;
(3) validation loss of teacher / converted-before-distillation / distilled / scratch, and each model's
peak decode cache per sequence at 8K tokens (the schedule scaled from L to 8K); (4) the planner's
loss-vs-memory path for the distilled student. Writes results.json, a markdown table and two plots.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CPU smoke settings (small model, few steps)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def settings(tiny: bool) -> dict:
    if tiny:
        return dict(d_model=64, n_heads=4, d_ff=128, seq_len=128, batch=8, teacher_steps=60, steps=30,
                    eval_batches=4, lr=3e-3)
    # 400 steps x 16K tokens: ~4 passes over the 1.5M-token corpus (more and the teacher overfits)
    return dict(d_model=256, n_heads=8, d_ff=768, seq_len=512, batch=32, teacher_steps=400, steps=250,
                eval_batches=20, lr=2e-3)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from transmamba import CausalLM
    from transmamba.conversion import convert_to_transmamba
    from transmamba.conversion.distill import DistillationModel
    from transmamba.conversion.planner import peak_cache_bytes, plan, plot_path
    from transmamba.data.packing import iter_eval_batches, prepare_text_data
    from transmamba.inference.cache import cache_bytes_per_sequence
    from transmamba.models.presets import get_preset
    from transmamba.training.config import TrainConfig
    from transmamba.training.trainer import Trainer

    s = settings(args.tiny)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    L, ctx = s["seq_len"], 8192
    data = prepare_text_data(None, seq_len=L, vocab_size=4096, cache_dir=str(out / "cache"))
    vocab = data.tokenizer.vocab_size
    tcfg = get_preset("transformer-tiny", vocab_size=vocab, d_model=s["d_model"], n_heads=s["n_heads"],
                      d_ff=s["d_ff"], max_seq_len=L)
    target = [0, L // 4, L // 2, (3 * L) // 4]  # TransPoints inside the row, rising with depth
    log_lines: list[str] = []

    def log(msg: str) -> None:
        log_lines.append(msg)
        print(msg, flush=True)

    def train_cfg(run: str, steps: int, seed: int) -> TrainConfig:
        return TrainConfig(preset="study", seq_len=L, batch_size=s["batch"], max_steps=steps, lr=s["lr"],
                           warmup_steps=max(1, steps // 20), eval_every=steps, eval_batches=s["eval_batches"],
                           log_every=max(1, steps // 50), progress=False, tensorboard=False, seed=seed,
                           device=args.device, out_dir=str(out / run), overwrite=True)

    t0 = time.time()
    torch.manual_seed(0)
    teacher_run = Trainer(train_cfg("teacher", s["teacher_steps"], 0), data=data, log=log,
                          model_factory=lambda v: CausalLM(tcfg)).fit()
    use_cuda = torch.cuda.is_available() and args.device != "cpu"
    teacher = CausalLM.from_pretrained(teacher_run.last_checkpoint).eval().to("cuda" if use_cuda else "cpu")
    log(f"teacher: val loss {teacher_run.final_val_loss:.4f} ({time.time() - t0:.0f} s)")

    def val_loss(model, with_kl: bool = False):
        """Validation cross entropy (and, with_kl, the mean KL(teacher || model) per target token)."""
        import torch.nn.functional as F

        dev = next(model.parameters()).device
        teacher.to(dev)
        model.eval()
        total, kl, n = 0.0, 0.0, 0
        with torch.no_grad():
            for b in iter_eval_batches(data.val, s["batch"], s["eval_batches"]):
                ids, sid, lab = b["input_ids"].to(dev), b["seq_idx"].to(dev), b["labels"].to(dev)
                valid = lab[:, 1:] != -100
                k = int(valid.sum())
                logits = model(ids, seq_idx=sid).logits[:, :-1][valid].float()
                total += float(F.cross_entropy(logits, lab[:, 1:][valid], reduction="sum"))
                if with_kl:
                    t = teacher(ids, seq_idx=sid).logits[:, :-1][valid].float()
                    kl += float(F.kl_div(F.log_softmax(logits, -1), F.log_softmax(t, -1), log_target=True,
                                         reduction="sum"))
                n += k
        return (total / max(n, 1), kl / max(n, 1)) if with_kl else total / max(n, 1)

    rows = []
    for seed in range(args.seeds):
        def distilled_factory(_v, seed=seed):
            student = convert_to_transmamba(teacher, [L] * 4, seed=seed)
            return DistillationModel(student, teacher, target_transpoints=target, lower_steps=s["steps"] // 2)

        converted = convert_to_transmamba(teacher, target, seed=seed)
        before, before_kl = val_loss(converted.to(teacher.device), with_kl=True)
        d = Trainer(train_cfg(f"distill-{seed}", s["steps"], seed), data=data, log=log,
                    model_factory=distilled_factory).fit()
        student = CausalLM.from_pretrained(d.last_checkpoint)
        scfg = student.config.replace(transpoints=target)

        def scratch_factory(_v, scfg=scfg, seed=seed):
            torch.manual_seed(seed)
            return CausalLM(scfg)

        sc = Trainer(train_cfg(f"scratch-{seed}", s["steps"], seed), data=data, log=log,
                     model_factory=scratch_factory).fit()
        d_loss, d_kl = val_loss(student.to(teacher.device), with_kl=True)
        scratch = CausalLM.from_pretrained(sc.last_checkpoint).to(teacher.device)
        sc_loss, sc_kl = val_loss(scratch, with_kl=True)
        row = {"seed": seed, "converted_no_training": before, "distilled": d_loss, "scratch": sc_loss,
               "kl_converted_no_training": before_kl, "kl_distilled": d_kl, "kl_scratch": sc_kl}
        rows.append(row)
        log(f"seed {seed}: {row}")

    teacher_loss = val_loss(teacher)
    scaled = [round(p * ctx / L) for p in target]
    mem = {
        "teacher": cache_bytes_per_sequence(tcfg, ctx),
        "transmamba (target schedule)": peak_cache_bytes(scfg, scaled, ctx),
        "transmamba (all SSM)": peak_cache_bytes(scfg, [0] * 4, ctx),
    }

    def summary(key: str) -> tuple[float, float]:
        vals = [r[key] for r in rows]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    # the planner on the first distilled student, on the same validation rows
    student = CausalLM.from_pretrained(out / "distill-0" / "last").eval()
    batches = [{k: v.to(teacher.device) for k, v in b.items()}
               for b in iter_eval_batches(data.val, 16, 2)]
    student.to(teacher.device)
    path = plan(student, batches, context=ctx, eval_len=L, speed_prompt=None)
    plot_path(path, out / "planner_tradeoff.png", title="distilled TransMamba: loss vs peak cache at 8K")

    result = {"settings": s, "target_transpoints": target, "target_at_8k": scaled, "teacher_val_loss":
              teacher_loss, "seeds": rows, "kv_bytes_at_8k": mem, "planner_path": [vars(p) for p in path],
              "wall_s": time.time() - t0, "device": str(teacher.device)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ["| model | val loss (mean ± sd over seeds) | KL(teacher ‖ model) per token | "
             "peak decode cache / sequence at 8K |", "|---|---|---|---|",
             f"| Transformer teacher | {teacher_loss:.4f} | 0 | {mem['teacher'] / 2**20:.2f} MiB |"]
    for key, name in (("converted_no_training", "converted, before distillation"),
                      ("distilled", f"converted + distilled {s['steps']} steps"),
                      ("scratch", f"TransMamba from scratch, {s['steps']} steps")):
        m, sd = summary(key)
        km, ksd = summary(f"kl_{key}")
        table.append(f"| {name} | {m:.4f} ± {sd:.4f} | {km:.4f} ± {ksd:.4f} | "
                     f"{mem['transmamba (target schedule)'] / 2**20:.2f} MiB |")
    (out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
