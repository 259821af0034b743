"""`python benchmarks/run.py --suite targets --out DIR [--resume]`: every headline number from one run.

A suite is an ordered list of *units*; a unit is one case of `benchmarks/run.py` with some of its options
fixed (e.g. `train-step` at T = 2K / 8K, then again at 16K / 32K), so that a run cut short loses at most
one unit. All units run in one process, one after another, and after each one the combined file
`DIR/targets.json` is rewritten (atomically):

    {"suite": "targets", "meta": {gpu, torch, triton, python, ...},
     "processes": [{"id", "pid", "command", "start_utc", "end_utc", "alloc_conf", "ceilings", "units"}],
     "units": {name: {"case", "status", "process", "attempts", "seconds", "start_utc", "end_utc",
                      "options", "rows" | "error"}}}

`status` is "done" (the case returned rows; errors inside rows, such as a peer refusing, are data),
"failed" (the case raised), "running" (written when a unit starts: if a later process finds it, that
process died inside it, so it reads as "interrupted") or "deferred" (not started: it would have run past
`--time-budget`). With `--resume` a run keeps the units already "done" and runs the others; a unit that
failed or was interrupted `MAX_ATTEMPTS` times is not tried again. Without `--resume` an existing file is
replaced. After every unit the per-case files (`DIR/<case>.json/.csv/.png`, rows of all units of a case
merged) and the report `DIR/targets.md` are regenerated (`benchmarks/report.py`).

Time: `--time-budget S` (seconds from the process start): a unit whose estimate (`Unit.est_s`, measured
on an H100) would end past it is deferred and the next units are tried, so a process under a hard limit
(the GPU machine allows 600 s per command) stops in time and a second `--resume` run does the rest.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
import traceback
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ATTEMPTS = 2
RESULTS_NAME = "targets.json"
REPORT_NAME = "targets.md"


@dataclass
class Unit:
    """One case of the runner with some options fixed. `split` names an option whose comma-separated value
    is cut into parts (`part` = (index, count)) so that two units share one long list."""

    name: str
    case: str
    est_s: float  # wall seconds on an H100 (fresh Triton cache), from the batch-6 / 7 rehearsals
    options: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    part: tuple[int, int] = (0, 1)


# Options the suite sets unless the command line gives them (names as in run.py's parser).
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


def run_peer_warm(args: Namespace) -> list[dict[str, Any]]:
    """Case `peer-warm` (benchmarks/peer_warm.py): compile the peers' autotuned SSD kernels in parallel
    worker processes before anything is timed; one row with the wall seconds and the workers' exit codes."""
    from peer_warm import warm

    workers = getattr(args, "warm_workers", None) or max(1, min(14, (os.cpu_count() or 4) - 2))
    row = warm(workers, getattr(args, "warm_timeout", None) or 200.0)
    print(json.dumps({k: v for k, v in row.items() if k != "worker0_tail"}))
    return [row]


SUITE_CASES = {"peer-warm": (run_peer_warm, "compile the peers' SSD kernels in parallel (nothing timed)")}


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


def load_results(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


_MACHINE_PATH = re.compile(r"(?<![\w.])/(?:root|work|farm|home|tmp|usr|opt|scratch)(?:/[^\s\"'\\:,()]+)+")


def scrub(text: str) -> str:
    """Machine paths out of text meant for the repository: the checkout's prefix dropped, any other absolute
    path under /root, /work, /tmp, ... cut to `<path>/<its last component>` (results get committed)."""
    root = str(Path(__file__).resolve().parents[1])
    text = text.replace(root + "/", "").replace(root, ".")
    return _MACHINE_PATH.sub(lambda m: "<path>/" + m.group(0).rsplit("/", 1)[-1], text)


def scrubbed(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(scrub(json.dumps(data, default=str)))


def save_results(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (a kill mid-write leaves the previous file), machine paths scrubbed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(scrub(json.dumps(data, indent=1, default=str)))
    os.replace(tmp, path)


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


def new_results(suite: str) -> dict[str, Any]:
    return {"suite": suite, "meta": {}, "processes": [], "units": {}}


def run_suite(args: Namespace, command: str, cases: dict[str, tuple[Callable, str]],
              env_meta: Callable[[], dict[str, Any]], ceilings: Callable[[], dict[str, float]],
              write_case_files: Callable[[dict[str, Any], Path], None], log=print,
              clock: Callable[[], float] = time.time) -> int:
    """Run the suite's units (see the module docstring); returns 0 when every unit is done, 1 if some
    failed, 3 if some are left (deferred by the time budget: run again with --resume)."""
    if args.suite not in SUITES:
        log(f"unknown suite {args.suite!r}; known: {', '.join(SUITES)}")
        return 2
    t_start = clock()
    cases = {**SUITE_CASES, **cases}
    out = Path(args.out)
    path = out / RESULTS_NAME
    shown = f"{_out_as_placeholder(['--out', str(out)])[1]}/{RESULTS_NAME}"  # for logs: no machine paths
    data = load_results(path) if args.resume else None
    if data is not None and data.get("suite") != args.suite:
        log(f"{shown} holds suite {data.get('suite')!r}, not {args.suite!r}; use another --out")
        return 2
    if data is None:
        if path.is_file():
            log(f"{shown} exists: replacing it (pass --resume to keep its finished units)")
        data = new_results(args.suite)
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
    data["meta"]["python"] = platform.python_version()
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
            save_results(path, data)

        uargs.row_sink = keep
        save_results(path, data)
        log(f"== {unit.name} ({unit.case}) starts at {elapsed:.0f} s (estimate {est:.0f} s)")
        t0 = clock()
        try:
            rows = cases[unit.case][0](uargs)
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
        save_results(path, data)
        log(f"== {unit.name}: {rec['status']} in {rec['seconds']} s "
            f"({len(rec.get('rows', []))} rows; {clock() - t_start:.0f} s since start)")
        _refresh(data, out, write_case_files, log)
    proc["end_utc"] = utc()
    proc["seconds"] = round(clock() - t_start, 1)
    save_results(path, data)
    _refresh(data, out, write_case_files, log)
    left = [n for n, r in data["units"].items() if r.get("status") != "done"]
    log(f"== suite {args.suite}: process {proc['id']} ran {len(proc['units'])} units in {proc['seconds']} s; "
        f"not done: {', '.join(left) or 'none'} -> {shown}")
    return status


def _refresh(data: dict[str, Any], out: Path, write_case_files, log) -> None:
    """Per-case files and the report; a report bug never stops the run."""
    try:
        data = scrubbed(data)
        write_case_files(data, out)
        from report import build_report

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


def main_suite(args: Namespace, argv: list[str], parser, cases, env_meta, ceilings, write_outputs) -> int:
    """Entry from run.py's main (CUDA already checked there)."""
    from report import write_case_files

    apply_suite_defaults(args, explicit_options(parser, argv))
    command = " ".join(["python", "benchmarks/run.py", *_out_as_placeholder(argv)])
    return run_suite(args, command, cases, env_meta, ceilings,
                     lambda data, out: write_case_files(data, out, write_outputs))


def _out_as_placeholder(argv: list[str]) -> list[str]:
    """The command as recorded: `--out` outside the checkout becomes `--out OUT` (no machine paths)."""
    root = Path(__file__).resolve().parents[1]
    out = list(argv)
    for i, a in enumerate(out):
        val = out[i + 1] if a == "--out" and i + 1 < len(out) else a[6:] if a.startswith("--out=") else None
        if val is None:
            continue
        try:
            shown = str(Path(val).resolve().relative_to(root))
        except ValueError:
            shown = "OUT"
        if a == "--out":
            out[i + 1] = shown
        else:
            out[i] = "--out=" + shown
    return out


def report_only(out: Path, write_outputs) -> int:
    """Rebuild the per-case files and targets.md from an existing targets.json (no GPU needed)."""
    from report import build_report, write_case_files

    data = load_results(out / RESULTS_NAME)
    if data is None:
        print(f"no {out / RESULTS_NAME}")
        return 2
    data = scrubbed(data)
    write_case_files(data, out, write_outputs)
    (out / REPORT_NAME).write_text(build_report(data))
    print(f"wrote {out / REPORT_NAME}")
    return 0
