"""Fuzz the command line: random and malformed arguments, config files and checkpoint folders, fed to
`cli.main` in-process for a bounded time. Every call must end with exit code 0 or 2 (1 only for a run
failure such as a non-finite loss, which says so), print no traceback, give at most one `error:` line (the
last line on stderr), and write nothing outside the scratch folder.

Each case starts from a fast, valid command line (tiny model, two steps, small data) and applies 1-3
mutations: a flag's value replaced by a hostile one (non-numbers, nan/inf, out of range, paths to missing,
empty, binary or unreadable things, braces, huge strings), a flag dropped, duplicated, misspelt or given in
underscore spelling, a random flag of another command inserted, a token dropped. Seeds are fixed, so a
failure names a reproducible argv.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest
import torch

from transmamba import cli

BUDGET_S = 25.0
MAX_CASES = 1500
REPO = Path(__file__).resolve().parents[2]

TINY = ["--threads", "1", "--vocab-size", "300", "--seq-len", "32", "--batch-size", "2", "--eval-batches",
        "1",
        "--warmup-steps", "1", "--progress", "false", "--tensorboard", "false", "--model.d_model", "32",
        "--model.d_ff", "64", "--model.chunk_size", "8", "--model.transpoints", "[0, 4, 8, 16]",
        "--max-steps", "2", "--eval-every", "2"]
FC_TINY = ["--synthetic-steps", "400", "--horizon", "8", "--seq-len", "24", "--epochs", "1", "--d-model",
           "16",
           "--n-heads", "2", "--batch-size", "16", "--no-plot", "--quiet", "--threads", "1",
           "--max-train-windows", "32", "--max-eval-windows", "16"]

HOSTILE = ["", "-1", "0", "2.5", "nan", "inf", "-inf", "1e309", "abc", "ümlaut", "/etc/passwd",
           "{tmp}/nosuch", "{tmp}/garbage.bin", "{tmp}/emptydir", "{tmp}/bad.yaml", "{tmp}/bool.yaml",
           "[1, 2", "true", "None", "x" * 300, "-", "{preset}", "%s%n", "V99", "0,0,0,999999", "1,2",
           "../../..", "{ckpt}", "{fc}"]


def _bases(fx: dict) -> list[tuple[list[str], list[str]]]:
    """(valid fast command line, guard): the guard is appended after mutating, so a run that the mutations
    left valid stays small (argparse keeps the last value of a flag)."""
    train_guard = ["--max-steps", "2", "--eval-every", "2", "--eval-batches", "1", "--progress", "false",
                   "--threads", "1"]
    return [
        (["info", "--preset", "mamba2-tiny", "--context", "64"], []),
        (["train", "--data", fx["corpus"], *TINY, "--out-dir", "{tmp}/runs/r", "--overwrite"],
         [*train_guard, "--data", fx["corpus"]]),
        (["train", "--task", "mqar", "--vocab-size", "64", "--seq-len", "64", "--batch-size", "2",
          "--max-steps", "1", "--eval-batches", "1", "--progress", "false", "--tensorboard", "false",
          "--threads", "1", "--model.d_model", "32", "--model.d_ff", "64", "--model.chunk_size", "8",
          "--out-dir", "{tmp}/runs/q"], [*train_guard, "--task-rows", "16"]),
        (["generate", "--checkpoint", fx["ckpt"], "--prompt", "the king", "--max-new-tokens", "4", "--seed",
          "0"], []),
        (["eval", "mqar", "--checkpoint", fx["ckpt"], "--lengths", "32", "--n-rows", "2", "--device", "cpu",
          "--no-progress"], ["--n-rows", "2"]),
        (["eval", "phonebook", "--checkpoint", fx["ckpt"], "--lengths", "64", "--n-rows", "2", "--device",
          "cpu", "--no-progress"], ["--n-rows", "2"]),
        (["eval", "perplexity", "--checkpoint", fx["ckpt"], "--data", fx["corpus"], "--seq-len", "32",
          "--max-windows", "2", "--device", "cpu", "--no-progress"], ["--max-windows", "2"]),
        (["forecast", "train", *FC_TINY, "--out", "{tmp}/runs/f"],
         ["--epochs", "1", "--max-train-windows", "32", "--max-eval-windows", "16",
          "--synthetic-steps", "400"]),
        (["forecast", "eval", "--checkpoint", fx["fc"], "--quiet"], []),
        (["export", "--checkpoint", fx["run"], "--out", "{tmp}/runs/e"], []),
        (["convert", fx["ckpt"], "{tmp}/runs/c", "--to", "native"], []),
        (["bench", "--runner", "{tmp}/nosuch.py", "--list"], ["--list"]),
        (["plan", "--checkpoint", fx["run"], "--budget", "lots", "--data", fx["corpus"], "--eval-len", "32",
          "--eval-batches", "1", "--context", "64", "--no-speed"],
         ["--data", fx["corpus"], "--eval-batches", "1", "--no-speed"]),
        (["distill", "--teacher", "{tmp}/nosuch", "--out-dir", "{tmp}/runs/d"], train_guard),
        (["demo", "--new-tokens", "-5", "--data", fx["corpus"], *TINY, "--out-dir", "{tmp}/runs/m"],
         [*train_guard, "--data", fx["corpus"], "--new-tokens", "4"]),
    ]


def _flags() -> list[str]:
    parser = cli.build_parser()
    names: set[str] = set()

    def walk(p):
        for a in p._actions:
            names.update(o for o in a.option_strings if o.startswith("--") and o not in ("--help",
                                                                                         "--version"))
            if hasattr(a, "choices") and isinstance(a.choices, dict):
                for sub in a.choices.values():
                    walk(sub)

    walk(parser)
    return sorted(names)


def mutate(argv: list[str], rng: random.Random, flags: list[str]) -> list[str]:
    argv = list(argv)
    head = 2 if argv[0] in ("eval", "forecast") else 1  # keep the (sub-)command itself
    for _ in range(rng.randint(1, 3)):
        body = argv[head:]
        op = rng.random()
        values = [i for i, a in enumerate(body) if not a.startswith("--")]
        opts = [i for i, a in enumerate(body) if a.startswith("--")]
        if op < 0.45 and values:  # hostile value
            body[rng.choice(values)] = rng.choice(HOSTILE)
        elif op < 0.55 and opts:  # underscore spelling or a typo of a flag
            i = rng.choice(opts)
            body[i] = body[i].replace("-", "_").replace("__", "--", 1) if rng.random() < 0.5 else body[i][:-1]
        elif op < 0.65 and body:  # drop a token
            del body[rng.randrange(len(body))]
        elif op < 0.8:  # a flag of any command, with a hostile value
            body += [rng.choice(flags), rng.choice(HOSTILE)]
        elif op < 0.9 and opts:  # the same flag twice, second one hostile
            body += [body[rng.choice(opts)], rng.choice(HOSTILE)]
        else:  # junk positional
            body.insert(rng.randrange(len(body) + 1), rng.choice(HOSTILE))
        argv = argv[:head] + body
    return argv


def _fill(arg: str, fixtures: dict) -> str:
    for key in ("tmp", "ckpt", "fc"):
        arg = arg.replace("{" + key + "}", fixtures[key])
    return arg


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.iterdir()}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    os.environ["TRANSMAMBA_CACHE"] = str(tmp / "cache")
    corpus = tmp / "corpus"
    corpus.mkdir()
    rng = random.Random(20261205)
    words = "the king and the queen walk in the garden while rain falls on the old stone wall".split()
    for i in range(8):
        (corpus / f"p{i}.md").write_text("\n".join(" ".join(rng.choice(words) for _ in range(8))
                                                   for _ in range(30)))
    (tmp / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (tmp / "emptydir").mkdir()
    (tmp / "bad.yaml").write_text("lr: [unclosed\n")
    (tmp / "bool.yaml").write_text("batch_size: true\nmodel: 3\n")
    (tmp / "work").mkdir()
    run = tmp / "run"
    assert cli.main(["train", "--data", str(corpus), *TINY, "--out-dir", str(run)]) == 0
    fc = tmp / "fc"
    assert cli.main(["forecast", "train", *FC_TINY, "--out", str(fc)]) == 0
    return {"tmp": str(tmp), "corpus": str(corpus), "run": str(run), "ckpt": str((run / "last").resolve()),
            "fc": str(fc)}


def test_cli_fuzz(fixtures, capsys, monkeypatch):
    tmp = Path(fixtures["tmp"])
    monkeypatch.chdir(tmp / "work")
    torch.set_num_threads(1)
    flags = _flags()
    bases = _bases(fixtures)
    git_before = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                                text=True).stdout
    outside_before = _snapshot(tmp.parent)
    rng = random.Random(20261205)
    t0, n, codes = time.perf_counter(), 0, {}
    capsys.readouterr()
    while n < MAX_CASES and time.perf_counter() - t0 < BUDGET_S:
        base, guard = bases[n % len(bases)]
        argv = [_fill(a, fixtures) for a in mutate(base, rng, flags) + guard]
        t_case = time.perf_counter()
        try:
            rc = cli.main(argv)
        except SystemExit as exit_:  # --help / --version
            rc = exit_.code
        cap = capsys.readouterr()
        if os.environ.get("FUZZ_SLOW") and time.perf_counter() - t_case > 2:
            with open(os.environ["FUZZ_SLOW"], "a") as f:
                f.write(f"{time.perf_counter() - t_case:.1f}s {argv}\n")
        n += 1
        codes[rc] = codes.get(rc, 0) + 1
        text = cap.out + cap.err
        assert "Traceback" not in text, (argv, text[-3000:])
        errors = [x for x in cap.err.splitlines() if ": error: " in x]
        if rc == 0:
            assert not errors, (argv, cap.err)
        else:
            assert rc in (1, 2), (argv, rc, cap.err[-2000:])
            assert len(errors) == 1 and cap.err.rstrip().splitlines()[-1] == errors[0], (argv,
                                                                                         cap.err[-2000:])
            if rc == 1:
                assert "became" in errors[0] or "no space" in errors[0], (argv, errors[0])
    elapsed = time.perf_counter() - t0
    git_after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                               text=True).stdout
    assert git_after == git_before
    assert _snapshot(tmp.parent) == outside_before  # nothing new beside the scratch folder
    print(f"fuzz: {n} cases in {elapsed:.1f} s; exit codes {dict(sorted(codes.items()))}")
    assert n >= 50
