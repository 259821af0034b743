"""Feed every `transmamba` command the mistakes a new user makes; print a before/after markdown table.

    python experiments/cli_bad_inputs.py --before OLD/src --after src [--jobs 2] [--out table.md]

Each case runs `python -m transmamba ...` in a fresh process with PYTHONPATH set to one source tree, in a
scratch folder, and records the exit code and the last line on stderr. A case is classified:

    clean      exit 2 (usage) or 1 (run failure) and one line on stderr, no traceback
    traceback  a Python traceback reached the user
    silent     exit 0 although the input was wrong (accepted silently)
    ok         exit 0 and the input was meant to be accepted (e.g. an underscore alias)

Fixtures (a tiny trained run folder, a forecast checkpoint, planted checkpoints) are built once with the
`--before` tree, so both trees read the same files.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = ["--threads", "1", "--vocab_size", "300", "--seq_len", "32", "--batch_size", "2", "--eval_batches",
        "1",
        "--warmup_steps", "1", "--progress", "false", "--tensorboard", "false", "--model.d_model", "32",
        "--model.d_ff", "64", "--model.chunk_size", "8", "--model.transpoints", "[0, 4, 8, 16]"]
FC_TINY = ["--synthetic-steps", "400", "--horizon", "8", "--seq-len", "24", "--epochs", "1", "--d-model",
           "16",
           "--n-heads", "2", "--batch-size", "16", "--no-plot", "--quiet", "--threads", "1"]

# (command, what is wrong, argv with {placeholders}, meant to be accepted)
CASES: list[tuple[str, str, list[str], bool]] = [
    ("(top)", "misspelt command", ["trian"], False),
    ("train", "misspelt flag", ["train", "--max_step", "3"], False),
    ("train", "--max-steps 2.5", ["train", "--max-steps", "2.5", "--out-dir", "{tmp}/r1"], False),
    ("train", "--lr nan", ["train", "--lr", "nan", "--out-dir", "{tmp}/r2"], False),
    ("train", "--min-lr-ratio -1", ["train", "--min_lr_ratio", "-1", "--out-dir", "{tmp}/r3"], False),
    ("train", "--grad-clip -1", ["train", "--grad_clip", "-1", "--out-dir", "{tmp}/r4"], False),
    ("train", "YAML batch_size: true", ["train", "--config", "{tmp}/bool.yaml", "--data", "{corpus}",
                                         *TINY[2:4], "--max_steps", "1", "--out-dir", "{tmp}/r5"], False),
    ("train", "config is not YAML", ["train", "--config", "{tmp}/bad.yaml"], False),
    ("train", "--data missing", ["train", "--data", "{tmp}/nosuch.txt", "--out-dir", "{tmp}/r6"], False),
    ("train", "--data empty file", ["train", "--data", "{tmp}/empty.txt", "--out-dir", "{tmp}/r7"], False),
    ("train", "--device cuda without GPU", ["train", "--device", "cuda", "--data", "{corpus}", *TINY,
                                            "--max_steps", "1", "--out-dir", "{tmp}/r8"], False),
    ("train", "misspelt preset", ["train", "--preset", "transmamba-tin", "--out-dir", "{tmp}/r9"], False),
    ("train", "--resume with another preset", ["train", "--data", "{corpus}", *TINY, "--max_steps", "4",
                                               "--preset", "mamba2-tiny", "--resume", "--out_dir",
                                               "{run_copy}"], False),
    ("train", "--resume, optimizer.pt is a pickle", ["train", "--data", "{corpus}", *TINY, "--max_steps", "4",
                                                     "--resume", "--out_dir", "{pickled_run}"], False),
    ("demo", "--new-tokens -5", ["demo", "--new-tokens", "-5", "--out-dir", "{tmp}/d1"], False),
    ("demo", "--temperature nan", ["demo", "--temperature", "nan", "--out-dir", "{tmp}/d2"], False),
    ("generate", "underscore flag --max_new_tokens", ["generate", "--checkpoint", "{ckpt}", "--prompt", "the",
                                                      "--max_new_tokens", "3", "--seed", "0"], True),
    ("generate", "run folder as --checkpoint", ["generate", "--checkpoint", "{run}", "--prompt", "the",
                                                "--max-new-tokens", "3", "--seed", "0"], True),
    ("generate", "--top-p 1.5", ["generate", "--checkpoint", "{ckpt}", "--prompt", "the", "--top-p", "1.5"],
     False),
    ("generate", "--temperature 0", ["generate", "--checkpoint", "{ckpt}", "--prompt", "the", "--temperature",
                                     "0"], False),
    ("generate", "--max-new-tokens 1e9", ["generate", "--checkpoint", "{ckpt}", "--prompt", "the",
                                          "--max-new-tokens", "1000000000"], False),
    ("generate", "--device cuda without GPU", ["generate", "--checkpoint", "{ckpt}", "--prompt", "the",
                                               "--device", "cuda"], False),
    ("generate", "--checkpoint missing", ["generate", "--checkpoint", "{tmp}/nosuch", "--prompt", "a"],
     False),
    ("generate", "--transpoints V99", ["generate", "--checkpoint", "{ckpt}", "--prompt", "a",
                                       "--transpoints", "V99"], False),
    ("generate", "TransPoint past max_seq_len", ["generate", "--checkpoint", "{ckpt}", "--prompt", "a",
                                                 "--transpoints", "0,4,8,99999"], False),
    ("generate", "forecast checkpoint", ["generate", "--checkpoint", "{fc}", "--prompt", "a"], False),
    ("generate", "config.json asks for 100k-wide model", ["generate", "--checkpoint", "{huge}", "--prompt",
                                                          "a"], False),
    ("generate", "weights file is not safetensors", ["generate", "--checkpoint", "{garbled}", "--prompt",
                                                     "a"], False),
    ("eval", "misspelt task", ["eval", "phonbook"], False),
    ("eval", "perplexity --data missing", ["eval", "perplexity", "--checkpoint", "{ckpt}", "--data",
                                           "{tmp}/nosuch.txt"], False),
    ("eval", "perplexity --data empty file", ["eval", "perplexity", "--checkpoint", "{ckpt}", "--data",
                                              "{tmp}/empty.txt"], False),
    ("eval", "perplexity --seq-len 1", ["eval", "perplexity", "--checkpoint", "{ckpt}", "--data", "{corpus}",
                                        "--seq-len", "1"], False),
    ("eval", "phonebook --transpoints V99", ["eval", "phonebook", "--checkpoint", "{ckpt}", "--transpoints",
                                             "V99", "--device", "cpu"], False),
    ("eval", "phonebook length > max_seq_len", ["eval", "phonebook", "--checkpoint", "{ckpt}", "--lengths",
                                                "100000", "--device", "cpu"], False),
    ("eval", "--device cuda without GPU", ["eval", "mqar", "--checkpoint", "{ckpt}", "--device", "cuda"],
     False),
    ("eval", "underscore flag --n_rows", ["eval", "mqar", "--checkpoint", "{ckpt}", "--n_rows", "4",
                                          "--lengths", "64", "--device", "cpu"], True),
    ("eval", "--batch-size 0", ["eval", "mqar", "--checkpoint", "{ckpt}", "--batch-size", "0"], False),
    ("forecast", "train --lr nan", ["forecast", "train", *FC_TINY, "--lr", "nan", "--out", "{tmp}/f1"],
     False),
    ("forecast", "train --horizon 0", ["forecast", "train", *FC_TINY, "--horizon", "0", "--out", "{tmp}/f2"],
     False),
    ("forecast", "train --data missing", ["forecast", "train", "--data", "{tmp}/nosuch.csv", "--out",
                                          "{tmp}/f3"], False),
    ("forecast", "train diverges (--lr 1e6)", ["forecast", "train", *FC_TINY, "--lr", "1000000", "--out",
                                               "{tmp}/f4"], False),
    ("forecast", "eval on a language-model checkpoint", ["forecast", "eval", "--checkpoint", "{ckpt}"],
     False),
    ("forecast", "eval, config names /etc/passwd", ["forecast", "eval", "--checkpoint", "{planted}"], False),
    ("forecast", "eval --checkpoint missing", ["forecast", "eval", "--checkpoint", "{tmp}/nosuch"], False),
    ("forecast", "eval --split tset", ["forecast", "eval", "--checkpoint", "{fc}", "--split", "tset"], False),
    ("forecast", "underscore flag --max_eval_windows", ["forecast", "train", *FC_TINY,
                                                        "--max_eval_windows", "8",
                                                        "--out", "{tmp}/f5"], True),
    ("bench", "--tokens 2.5", ["bench", "--tokens", "2.5"], False),
    ("bench", "--runner missing", ["bench", "--runner", "{tmp}/nosuch.py", "--list"], False),
    ("export", "--checkpoint missing", ["export", "--checkpoint", "{tmp}/nosuch", "--out", "{tmp}/e1"],
     False),
    ("export", "--checkpoint empty folder", ["export", "--checkpoint", "{tmp}/emptydir", "--out", "{tmp}/e2"],
     False),
    ("plan", "--checkpoint missing", ["plan", "--checkpoint", "{tmp}/nosuch", "--budget", "1GiB"], False),
    ("plan", "--budget lots", ["plan", "--checkpoint", "{run}", "--budget", "lots"], False),
    ("convert", "SRC missing", ["convert", "{tmp}/nosuch", "{tmp}/c1"], False),
    ("convert", "--to onnx", ["convert", "{ckpt}", "{tmp}/c2", "--to", "onnx"], False),
    ("distill", "--teacher missing", ["distill", "--teacher", "{tmp}/nosuch", "--out-dir", "{tmp}/x1"],
     False),
    ("info", "unknown preset", ["info", "--preset", "nosuch"], False),
    ("info", "--context -1", ["info", "--context", "-1"], False),
]


def _run(src: str, argv: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "TRANSMAMBA_CACHE": str(cwd / "cache")}
    env.pop("TRANSMAMBA_DEBUG", None)
    try:
        p = subprocess.run([sys.executable, "-m", "transmamba", *argv], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "", f"(timed out after {timeout:.0f} s)"
    return p.returncode, p.stdout, p.stderr


def build_fixtures(src: str, tmp: Path) -> dict[str, str]:
    """A tiny run folder, its checkpoint, a forecast checkpoint and planted/broken copies."""
    import random

    rng = random.Random(0)
    words = "the king and the queen walk in the garden while rain falls on the old stone wall".split()
    corpus = tmp / "corpus"
    corpus.mkdir()
    for i in range(10):
        lines = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(40)]
        (corpus / f"play{i}.md").write_text("\n".join(lines) + "\n")
    (tmp / "empty.txt").write_text("")
    (tmp / "emptydir").mkdir()
    (tmp / "bool.yaml").write_text("batch_size: true\n")
    (tmp / "bad.yaml").write_text("lr: [unclosed\n")
    run = tmp / "run"
    rc, out, err = _run(src, ["train", "--data", str(corpus), *TINY, "--max_steps", "2", "--eval_every", "2",
                              "--out_dir", str(run)], tmp, timeout=600)
    if rc != 0:
        raise SystemExit(f"fixture run failed: {err[-2000:]}")
    ckpt = (run / "last").resolve()
    shutil.copytree(run, tmp / "run_copy", symlinks=True)
    pickled = tmp / "pickled_run"
    shutil.copytree(run, pickled, symlinks=True)
    (pickled / "last").resolve().joinpath("optimizer.pt").write_bytes(_evil_pickle())
    fc = tmp / "fc"
    rc, out, err = _run(src, ["forecast", "train", *FC_TINY, "--out", str(fc)], tmp, timeout=600)
    if rc != 0:
        raise SystemExit(f"fixture forecast run failed: {err[-2000:]}")
    planted = tmp / "planted"
    shutil.copytree(fc, planted)
    meta = json.loads((planted / "config.json").read_text())
    meta["data"]["path"] = "/etc/passwd"
    meta["data"].pop("synthetic", None)
    (planted / "config.json").write_text(json.dumps(meta))
    huge = tmp / "huge"
    shutil.copytree(ckpt, huge)
    cfg = json.loads((huge / "config.json").read_text())
    cfg["d_model"], cfg["d_ff"] = 100_000, 400_000
    (huge / "config.json").write_text(json.dumps(cfg))
    garbled = tmp / "garbled"
    shutil.copytree(ckpt, garbled)
    (garbled / "model.safetensors").write_bytes(b"\xff" * 64)
    return {"tmp": str(tmp), "corpus": str(corpus), "run": str(run), "ckpt": str(ckpt),
            "run_copy": str(tmp / "run_copy"), "pickled_run": str(pickled), "fc": str(fc),
            "planted": str(planted), "huge": str(huge), "garbled": str(garbled)}


def _evil_pickle() -> bytes:
    """A pickle that would run `print` if unpickled with weights_only=False (it is never run here)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("PWNED: unpickled code ran",))

    return pickle.dumps(Evil())


def classify(rc: int, err: str, out: str, accept: bool) -> str:
    if "Traceback (most recent call last)" in err or "Traceback (most recent call last)" in out:
        return "traceback"
    if rc == -1:
        return "ran (accepted, killed at 60 s)" if not accept else "timeout"
    if rc == 0:
        return "ok" if accept else "silent"
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("data:", "model:", "training a"))]
    return "clean" if rc in (1, 2, 130) and len(lines) <= 1 else f"rc {rc}, {len(lines)} lines"


def _last_line(err: str, out: str) -> str:
    lines = [x.strip() for x in err.splitlines() if x.strip()] or [x.strip() for x in out.splitlines()
                                                                   if x.strip()]
    line = lines[-1] if lines else ""
    line = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in line).replace("|", "/")
    return line if len(line) <= 150 else line[:147] + "..."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="source tree (its src/) before the change")
    ap.add_argument("--after", required=True, help="source tree (its src/) after the change")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the table here")
    args = ap.parse_args()
    before, after = str(Path(args.before).resolve()), str(Path(args.after).resolve())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fx = build_fixtures(before, tmp)
        jobs = []
        for i, (_cmd, _what, argv, accept) in enumerate(CASES):
            filled = [a.format(**fx) for a in argv]
            for tag, src in (("before", before), ("after", after)):
                cwd = tmp / f"cwd-{tag}-{i}"
                cwd.mkdir()
                jobs.append((i, tag, src, filled, cwd, accept))
        results: dict[tuple[int, str], tuple[str, str, int]] = {}
        with cf.ThreadPoolExecutor(args.jobs) as pool:
            futs = {pool.submit(_run, src, argv, cwd): (i, tag, accept) for i, tag, src, argv, cwd,
                    accept in jobs}
            for fut in cf.as_completed(futs):
                i, tag, accept = futs[fut]
                rc, out, err = fut.result()
                if "PWNED" in out + err or "root:x:0" in out + err:
                    err += " [LEAK: planted content printed]"
                results[(i, tag)] = (classify(rc, err, out, accept), _last_line(err, out), rc)
    rows = ["| # | command | bad input | before | before: message | after | after: message |",
            "|---|---|---|---|---|---|---|"]
    counts = {"before": {}, "after": {}}
    for i, (cmd, what, _argv, _a) in enumerate(CASES):
        b, a = results[(i, "before")], results[(i, "after")]
        for tag, r in (("before", b), ("after", a)):
            counts[tag][r[0]] = counts[tag].get(r[0], 0) + 1
        rows.append(f"| {i + 1} | {cmd} | {what} | {b[0]} ({b[2]}) | `{b[1]}` | {a[0]} ({a[2]}) | `{a[1]}` |")
    summary = "\n".join(f"{tag}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                        for tag, c in counts.items())
    text = "\n".join(rows) + f"\n\n{len(CASES)} cases.\n{summary}\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
