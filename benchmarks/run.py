# ruff: noqa: E501
"""The benchmark runner: one registry of cases (`benchmarks/cases/`), one report (`benchmarks/report.py`).

    python benchmarks/run.py --list
    python benchmarks/run.py --cases ceilings,ssd-op --out runs/bench          (JSON + CSV + MD + PNG per case)
    transmamba bench --cases ssd-op --out runs/bench                          (the same, through the CLI)
    python benchmarks/run.py --suite targets --out DIR --resume --time-budget 520
    python benchmarks/run.py --cases pointcloud,diffusion-scaling,serve-load --out runs/domains   (CPU too)

Each case writes <out>/<case>.json (rows + meta: device, versions, the command), .csv, and where defined a
markdown table .md and a plot .png. GPU cases refuse to run without CUDA; the domain cases also run on the CPU.
Results go under the ignored runs/ folder by default.

A suite (`--suite targets`: every headline number in one process) is an ordered list of *units*; a unit is
one case with some of its options fixed (e.g. `train-step` at T = 2K / 8K, then again at 16K / 32K), so that
a run cut short loses at most one unit. After each unit `DIR/targets.json` is rewritten (atomically):

    {"suite": "targets", "meta": {gpu, torch, triton, python, ...},
     "processes": [{"id", "pid", "command", "start_utc", "end_utc", "alloc_conf", "ceilings", "units"}],
     "units": {name: {"case", "status", "process", "attempts", "seconds", "start_utc", "end_utc",
                      "options", "rows" | "error"}}}

`status` is "done" (the case returned rows; errors inside rows, such as a peer refusing, are data),
"failed" (the case raised), "running" (written when a unit starts: if a later process finds it, that
process died inside it, so it reads as "interrupted") or "deferred" (not started: it would have run past
`--time-budget`). With `--resume` a run keeps the units already "done" and runs the others; a unit that
failed or was interrupted `MAX_ATTEMPTS` times is not tried again. After every unit the per-case files and
the report `DIR/targets.md` are regenerated. `--time-budget S` (seconds from the process start): a unit whose
estimate (`Unit.est_s`, measured on an H100) would end past it is deferred, so a process under a hard limit
stops in time and a second `--resume` run does the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "src"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

from benchmarks.cases import CASES, OPTIONS, Case  # noqa: E402
from benchmarks.common import ceilings, env_meta, scrub, shown_out, write_json  # noqa: E402
from benchmarks.report import build_report, write_case_files, write_outputs  # noqa: E402

MAX_ATTEMPTS = 2
RESULTS_NAME = "targets.json"
REPORT_NAME = "targets.md"


@dataclass
class Unit:
    """One case of the runner with some options fixed. `split` names an option whose comma-separated value
    is cut into parts (`part` = (index, count)) so that two units share one long list."""

    name: str
    case: str
    est_s: float  # wall seconds on an H100 (fresh Triton cache), measured
    options: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    part: tuple[int, int] = (0, 1)


# Options the suite sets unless the command line gives them (names as in the runner's parser).
SUITE_DEFAULTS: dict[str, dict[str, Any]] = {
    "targets": {
        "lengths": "1024,2048,4096,8192,16384,32768",
        "tokens": 32768,
        "torch_max_len": 1024,  # the plain-PyTorch chunked SSD / scan: one reference point
        "scan_seq_max_len": 0,  # the sequential scan reference: slow, not a headline number
        "train_models": "transmamba-400m,transformer-400m-eq,mamba2-400m,mamba2-hybrid-400m",
        "train_lengths": "2048,8192,16384,32768",
        "train_tokens": 32768,
        "train_steps": 3,
        "decode_contexts": "4096,8192,16384,32768,65536,131072",
        "decode_batches": "1,16,64",
        "decode_target_ms": 40.0,
    },
}

SUITES: dict[str, list[Unit]] = {  # estimates: H100 runs
    "targets": [
        Unit("peer-warm", "peer-warm", 245),  # at most the probe + --warm-timeout + start-up; measured 126 s
        Unit("ceilings", "ceilings", 5),
        Unit("ssd-op", "ssd-op", 130),  # after peer-warm 115 s (without it: mamba_ssm fwd alone > 140 s)
        Unit("ssd-decode", "ssd-decode", 10),
        Unit("scan-op", "scan-op", 45),
        Unit("scan-decode", "scan-decode", 10),
        Unit("train-step-a", "train-step", 40, split="train_lengths", part=(0, 2)),
        Unit("train-step-b", "train-step", 45, split="train_lengths", part=(1, 2)),
        Unit("transpoint-sweep", "transpoint-sweep", 40),
        Unit("decode-a", "decode", 45, split="decode_batches", part=(0, 2)),
        Unit("decode-b", "decode", 35, split="decode_batches", part=(1, 2)),
    ],
}


def split_part(value: str, part: tuple[int, int]) -> str:
    """Part i of n of a comma-separated list (the earlier parts get the extra items): '1,16,64', (0, 2) ->
    '1,16'; (1, 2) -> '64'. Empty when the list has fewer than n items and this part gets none."""
    items = [v for v in str(value).split(",") if v]
    i, n = part
    per, extra = divmod(len(items), n)
    start = i * per + min(i, extra)
    stop = start + per + (1 if i < extra else 0)
    return ",".join(items[start:stop])


def unit_args(unit: Unit, args: Namespace) -> Namespace:
    """The runner's options for one unit: the suite's (already merged into args), the unit's fixed ones,
    then the split option cut to the unit's part."""
    opts = dict(vars(args))
    opts.update(unit.options)
    if unit.split is not None:
        opts[unit.split] = split_part(opts[unit.split], unit.part)
    return Namespace(**opts)


def apply_suite_defaults(args: Namespace, explicit: set[str]) -> Namespace:
    """args with the suite's defaults for every option not given on the command line."""
    for k, v in SUITE_DEFAULTS.get(args.suite, {}).items():
        if k not in explicit:
            setattr(args, k, v)
    return args


def plan(units: list[Unit], data: dict[str, Any], wanted: set[str] | None) -> list[tuple[Unit, str]]:
    """(unit, why) for each unit of the suite: why = "run", or the reason it is skipped."""
    out = []
    for u in units:
        rec = data["units"].get(u.name, {})
        st = rec.get("status")
        if wanted is not None and u.name not in wanted:
            out.append((u, "not selected (--suite-units)"))
        elif st == "done":
            out.append((u, f"done by process {rec.get('process')}"))
        elif st in ("failed", "running", "interrupted") and rec.get("attempts", 0) >= MAX_ATTEMPTS:
            out.append((u, f"{st} {rec.get('attempts')} times, not tried again"))
        else:
            out.append((u, "run"))
    return out


def utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def run_suite(args: Namespace, command: str, cases: dict[str, Case],
              env_meta: Callable[[], dict[str, Any]], ceilings: Callable[[], dict[str, float]],
              write_case_files: Callable[[dict[str, Any], Path], None], log=print,
              clock: Callable[[], float] = time.time) -> int:
    """Run the suite's units (see the module docstring); returns 0 when every unit is done, 1 if some
    failed, 3 if some are left (deferred by the time budget: run again with --resume)."""
    if args.suite not in SUITES:
        log(f"unknown suite {args.suite!r}; known: {', '.join(SUITES)}")
        return 2
    t_start = clock()
    out = Path(args.out)
    path = out / RESULTS_NAME
    shown = f"{shown_out(['--out', str(out)])[1]}/{RESULTS_NAME}"  # for logs: no machine paths
    data = json.loads(path.read_text()) if args.resume and path.is_file() else None
    if data is not None and data.get("suite") != args.suite:
        log(f"{shown} holds suite {data.get('suite')!r}, not {args.suite!r}; use another --out")
        return 2
    if data is None:
        if path.is_file():
            log(f"{shown} exists: replacing it (pass --resume to keep its finished units)")
        data = {"suite": args.suite, "meta": {}, "processes": [], "units": {}}
    for rec in data["units"].values():  # a unit left "running" belongs to a process that died inside it
        if rec.get("status") == "running":
            rec["status"] = "interrupted"
    wanted = set(args.suite_units.split(",")) if getattr(args, "suite_units", None) else None
    if wanted is not None and "ssd-op" in wanted:  # its peers' first compile does not fit a command alone
        wanted.add("peer-warm")
    if not any(why == "run" for _, why in plan(SUITES[args.suite], data, wanted)):
        log(f"== suite {args.suite}: nothing left to run in {shown}")
        _refresh(data, out, write_case_files, log)
        return 0 if all(r.get("status") == "done" for r in data["units"].values()) else 1
    env = env_meta()
    if data["meta"].get("gpu") and env.get("gpu") != data["meta"]["gpu"]:
        log(f"{shown} was measured on {data['meta']['gpu']!r}, this is {env.get('gpu')!r}: one run means one "
            "GPU; use another --out")
        return 2
    proc = {"id": len(data["processes"]) + 1, "pid": os.getpid(), "command": command, "start_utc": utc(),
            "end_utc": None, "gpu": env.get("gpu"), "units": [],
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    data["processes"].append(proc)
    data["meta"].update(env)
    budget = getattr(args, "time_budget", None)
    status = 0
    for unit, why in plan(SUITES[args.suite], data, wanted):
        if why != "run":
            log(f"== {unit.name}: skipped ({why})")
            continue
        uargs = unit_args(unit, args)
        if unit.split is not None and not getattr(uargs, unit.split):
            log(f"== {unit.name}: nothing to run ({unit.split} has no part {unit.part[0]})")
            continue
        elapsed = clock() - t_start
        est = unit.est_s
        if unit.case == "peer-warm":  # bounded by the probe (30 s) and its own timeout
            est = min(est, (getattr(args, "warm_timeout", None) or est) + 45)
        if budget is not None and elapsed + est > budget:
            log(f"== {unit.name}: deferred (estimate {est:.0f} s, {budget - elapsed:.0f} s of the "
                f"{budget:.0f} s budget left); run again with --resume")
            rec = data["units"].setdefault(unit.name, {"case": unit.case, "attempts": 0})
            rec["status"] = "deferred"
            status = max(status, 3)
            continue
        rec = data["units"].setdefault(unit.name, {"case": unit.case, "attempts": 0})
        rec.update(case=unit.case, status="running", process=proc["id"], start_utc=utc(),
                   attempts=rec.get("attempts", 0) + 1, partial_rows=[],
                   options={k: v for k, v in vars(uargs).items() if k not in ("func", "row_sink")})
        rec.pop("error", None)

        def keep(row: dict[str, Any], rec=rec) -> None:  # rows saved as the case makes them (if it does)
            rec["partial_rows"].append(row)
            write_json(path, data)

        uargs.row_sink = keep
        write_json(path, data)
        log(f"== {unit.name} ({unit.case}) starts at {elapsed:.0f} s (estimate {est:.0f} s)")
        t0 = clock()
        try:
            rows = cases[unit.case].fn(uargs)
            rec.update(status="done", rows=rows)
            rec.pop("partial_rows", None)
        except Exception as err:  # noqa: BLE001 - one unit's failure must not lose the others
            traceback.print_exc()
            rec.update(status="failed", error=f"{err!r}"[:500], traceback=traceback.format_exc()[-2000:])
            status = max(status, 1)
        rec["seconds"] = round(clock() - t0, 1)
        rec["end_utc"] = utc()
        proc["units"].append(unit.name)
        try:
            proc["ceilings"] = ceilings()
        except Exception as err:  # noqa: BLE001 - e.g. no GPU in a test
            proc["ceilings"] = {"error": repr(err)[:200]}
        proc["end_utc"] = utc()
        write_json(path, data)
        log(f"== {unit.name}: {rec['status']} in {rec['seconds']} s "
            f"({len(rec.get('rows', []))} rows; {clock() - t_start:.0f} s since start)")
        _refresh(data, out, write_case_files, log)
    proc["end_utc"] = utc()
    proc["seconds"] = round(clock() - t_start, 1)
    write_json(path, data)
    _refresh(data, out, write_case_files, log)
    left = [n for n, r in data["units"].items() if r.get("status") != "done"]
    log(f"== suite {args.suite}: process {proc['id']} ran {len(proc['units'])} units in {proc['seconds']} s; "
        f"not done: {', '.join(left) or 'none'} -> {shown}")
    return status


def _refresh(data: dict[str, Any], out: Path, write_case_files, log) -> None:
    """Per-case files and the report; a report bug never stops the run."""
    try:
        data = json.loads(scrub(json.dumps(data, default=str)))
        write_case_files(data, out)
        (out / REPORT_NAME).write_text(build_report(data))
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        log(f"report: {err!r}")


def explicit_options(parser, argv: list[str]) -> set[str]:
    """Destinations of the options given on the command line (a parse with every default suppressed)."""
    import argparse

    quiet = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:  # noqa: SLF001 - the same options, without defaults
        if action.option_strings and action.dest != "help":
            kw: dict[str, Any] = {"dest": action.dest}
            if action.nargs == 0:
                kw["action"] = "store_true"
            quiet.add_argument(*action.option_strings, **kw)
    ns, _ = quiet.parse_known_args(argv)
    return set(vars(ns))


def set_alloc_conf() -> str:
    """expandable_segments:True for the training cases (fragmentation at 32K tokens per step), set before
    torch initialises CUDA; an existing PYTORCH_CUDA_ALLOC_CONF is kept as given."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    return os.environ["PYTORCH_CUDA_ALLOC_CONF"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="transmamba benchmarks (one registry of cases, see --list)")
    ap.add_argument("--cases", default="ceilings,ssd-op", help="comma-separated case names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--out", default=None, help="output folder (default: runs/bench)")
    ap.add_argument("--suite", default=None, choices=sorted(SUITES),
                    help="run a whole suite in one process instead of --cases: every case behind the headline "
                         "numbers, per-case files plus OUT/targets.json and OUT/targets.md")
    ap.add_argument("--resume", action="store_true", help="--suite: keep the units already done and run the rest")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="--suite: seconds this process may take; units whose estimate would end later are "
                         "deferred to a --resume run")
    ap.add_argument("--suite-units", default=None, help="--suite: only these units (comma-separated)")
    ap.add_argument("--report-only", action="store_true",
                    help="--suite: rebuild the per-case files and OUT/targets.md from OUT/targets.json (no GPU)")
    group = ap.add_argument_group("case options")
    for flags, kw in OPTIONS:
        group.add_argument(*flags, **kw)
    return ap


def report_only(out: Path) -> int:
    """Rebuild the per-case files and targets.md from an existing targets.json (no GPU needed)."""
    path = out / RESULTS_NAME
    if not path.is_file():
        print(f"no {path}")
        return 2
    data = json.loads(scrub(path.read_text()))
    write_case_files(data, out)
    (out / REPORT_NAME).write_text(build_report(data))
    print(f"wrote {out / REPORT_NAME}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, c in CASES.items():
            print(f"{name:18s} {c.help}")
        return 0
    out = Path(args.out or ROOT / "runs" / "bench")
    args.out = str(out)
    if args.suite and args.report_only:
        return report_only(out)
    if args.suite:
        set_alloc_conf()  # before anything initialises CUDA
        names = sorted({u.case for u in SUITES[args.suite]})
    else:
        names = [c for c in args.cases.split(",") if c]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    if any(CASES[n].needs_gpu(args) for n in names) and not torch.cuda.is_available():
        print("benchmarks " + ", ".join(n for n in names if CASES[n].needs_gpu(args)) + " need a CUDA GPU"
              + (" (--report-only rebuilds the report from an existing targets.json)" if args.suite else ""),
              file=sys.stderr)
        return 2
    command = " ".join(["python", "benchmarks/run.py", *shown_out(argv)])
    if args.suite:
        apply_suite_defaults(args, explicit_options(parser, argv))
        return run_suite(args, command, CASES, env_meta, ceilings, write_case_files)
    status = 0
    for name in names:
        t0 = time.time()
        rows = CASES[name].fn(args)
        meta = {"case": name, **env_meta(), "command": command, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                "ceilings": ceilings() if CASES[name].needs_gpu(args) else None, "seconds": round(time.time() - t0, 1)}
        write_outputs(name, rows, out, meta)
        print(f"== {name}: {len(rows)} rows in {meta['seconds']} s -> {out}/{name}.json")
        if any("error" in k for r in rows for k in r):
            status = 1
    return status


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
