# ruff: noqa: E501  (report strings and table rows read better unwrapped)
"""What a benchmark run writes, and the report of a suite.

Per case: `<out>/<case>.json` (rows + metadata), `.csv` (every key), and where one is defined a markdown table
`.md` (`TABLES`) and a plot `.png` (`PLOTS`). A suite's report `<out>/targets.md` is computed from
`<out>/targets.json`: every number is read from the rows; the performance targets are the only constants here
(`TARGETS`), and each target row says: value, target, met / missed / not measured, and for a miss the
shortfall factor (how many times better the value must get: value / target for "at most" targets,
target / value for "at least" ones). Nothing here needs a GPU.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the performance targets: (key, comparison, goal)
TARGETS = {
    "ssd_fwdbwd_vs_mamba": ("<=", 0.5),
    "ssd_fwd_frac_of_floor": (">=", 0.5),
    "train_x_transformer_8192": (">=", 1.33),
    "train_x_transformer_32768": (">=", 2.0),
    "train_mfu": (">=", 0.40),
    "decode_x_transformer": (">=", 8.0),
    "decode_frac_of_bound": (">=", 0.80),
}
TRANSMAMBA, HYBRID = "transmamba-400m", "mamba2-hybrid-400m"
DECODE_CTX, DECODE_BATCH = 32768, 16

Row = dict[str, Any]


# ---- data access --------------------------------------------------------------------------------------


def case_rows(data: dict[str, Any]) -> dict[str, list[Row]]:
    """Rows of every finished unit, merged per case (units in the order they are stored)."""
    out: dict[str, list[Row]] = {}
    for rec in data.get("units", {}).values():
        if rec.get("status") == "done":
            out.setdefault(rec["case"], []).extend(rec.get("rows", []))
    for rec in data.get("units", {}).values():  # rows a unfinished unit kept, where nothing finished
        if rec.get("status") != "done" and rec.get("partial_rows") and rec["case"] not in out:
            out[rec["case"]] = [{**r, "partial": f"unit {rec.get('status')}"} for r in rec["partial_rows"]]
    return out


def case_meta(data: dict[str, Any], case: str) -> dict[str, Any]:
    """meta of a merged case file: the suite's meta, the units and processes behind it, their commands."""
    units = {n: r for n, r in data.get("units", {}).items() if r.get("case") == case and r.get("status") == "done"}
    procs = {p["id"]: p for p in data.get("processes", [])}
    ids = sorted({r.get("process") for r in units.values()})
    meta = dict(data.get("meta", {}))
    meta.update(case=case, suite=data.get("suite"), units=sorted(units),
                processes=ids, command=" ; ".join(procs[i]["command"] for i in ids if i in procs),
                seconds=round(sum(r.get("seconds") or 0 for r in units.values()), 1),
                ceilings=next((procs[i].get("ceilings") for i in ids if i in procs), None))
    return meta


def write_case_files(data: dict[str, Any], out: Path) -> None:
    """DIR/<case>.json/.csv/.md/.png for every case of a suite with rows."""
    for case, rows in case_rows(data).items():
        if case == "decode":
            rows = with_decode_ratios(rows)
        write_outputs(case, rows, out, case_meta(data, case))


def with_decode_ratios(rows: list[Row]) -> list[Row]:
    """Copies of the decode rows with graph tokens/s over the Transformer's at the same (context, batch)."""
    ref = {(r["context"], r["batch"]): r["graph_tokens_per_s"] for r in rows
           if str(r.get("model", "")).startswith("transformer") and "graph_tokens_per_s" in r}
    out = []
    for r in rows:
        r = dict(r)
        base = ref.get((r.get("context"), r.get("batch")))
        if base and "graph_tokens_per_s" in r:
            r["graph_x_transformer"] = r["graph_tokens_per_s"] / base
        out.append(r)
    return out


# ---- targets --------------------------------------------------------------------------------------------


def _judge(name: str, where: str, value: float | None, key: str, why_missing: str = "", note: str = "") -> Row:
    op, goal = TARGETS[key]
    row: Row = {"target": name, "where": where, "value": value, "goal": f"{op} {goal:g}", "note": note}
    if value is None:
        row.update(status="not measured", shortfall=None, note=why_missing or note)
        return row
    met = value <= goal if op == "<=" else value >= goal
    short = None if met else (value / goal if op == "<=" else (goal / value if value > 0 else float("inf")))
    row.update(status="met" if met else "missed", shortfall=short)
    return row


def _train_row(rows: list[Row], model: str, T: int) -> Row | None:
    return next((r for r in rows if r.get("model") == model and r.get("T") == T and "tokens_per_s" in r), None)


def targets(data: dict[str, Any]) -> list[Row]:
    """Every target judged on the data (one line per L / T / model)."""
    rows = case_rows(data)
    out: list[Row] = []
    ssd = rows.get("ssd-op", [])
    if not ssd:
        out.append(_judge("SSD fwd+bwd / mamba_ssm", "every L", None, "ssd_fwdbwd_vs_mamba", "ssd-op not run"))
        out.append(_judge("SSD fwd / floor", "every L", None, "ssd_fwd_frac_of_floor", "ssd-op not run"))
    for r in ssd:
        ratio = None
        if "ours_fwdbwd_ms" in r and "mamba_ssm_fwdbwd_ms" in r:
            ratio = r["ours_fwdbwd_ms"] / r["mamba_ssm_fwdbwd_ms"]
        why = r.get("mamba_ssm_error") or r.get("ours_error") or "mamba_ssm not measured"
        out.append(_judge("SSD fwd+bwd / mamba_ssm", f"L = {r.get('L')}", ratio, "ssd_fwdbwd_vs_mamba", why))
    for r in ssd:
        frac = r["fwd_floor_ms"] / r["ours_fwd_ms"] if "ours_fwd_ms" in r and "fwd_floor_ms" in r else None
        out.append(_judge("SSD fwd / floor", f"L = {r.get('L')}", frac, "ssd_fwd_frac_of_floor",
                          r.get("ours_error", "ours not measured")))
    train = rows.get("train-step", [])
    tf = "transformer-400m-eq"
    for T, key in ((8192, "train_x_transformer_8192"), (32768, "train_x_transformer_32768")):
        a, b = _train_row(train, TRANSMAMBA, T), _train_row(train, tf, T)
        val = a["tokens_per_s"] / b["tokens_per_s"] if a and b else None
        note = ""
        if a and b and a.get("train_GFLOP_per_token") and b.get("train_GFLOP_per_token"):
            note = (f"at equal MFU the FLOPs allow {b['train_GFLOP_per_token'] / a['train_GFLOP_per_token']:.2f}× "
                    f"({b['train_GFLOP_per_token']:.2f} / {a['train_GFLOP_per_token']:.2f} GFLOP per token)")
        out.append(_judge("training tokens/s, transmamba-400m / transformer-400m-eq", f"T = {T}", val, key,
                          f"missing row(s) at T = {T}", note))
    for T in (8192, 32768):
        a = _train_row(train, TRANSMAMBA, T)
        val, note = None, ""
        if a is not None:
            spec = a.get("mfu_spec")
            val = spec if spec is not None else a.get("mfu")
            note = "of the datasheet bf16 rate" if spec is not None else "of the measured matmul rate"
            if spec is not None and a.get("mfu") is not None:
                note += f" ({a['mfu']:.1%} of the measured matmul rate)"
        out.append(_judge("MFU transmamba-400m", f"T = {T}", val, "train_mfu", f"no transmamba-400m row at T = {T}",
                          note))
    dec = with_decode_ratios(rows.get("decode", []))
    for model in (HYBRID, TRANSMAMBA):
        r = next((x for x in dec if x.get("model") == model and x.get("context") == DECODE_CTX
                  and x.get("batch") == DECODE_BATCH), None)
        where = f"{model}, context {DECODE_CTX // 1024}K, batch {DECODE_BATCH}"
        why = "decode not run" if r is None else (r.get("skipped") or r.get("error") or "no graph timing")
        tfr = next((x for x in dec if str(x.get("model", "")).startswith("transformer")
                    and x.get("context") == DECODE_CTX and x.get("batch") == DECODE_BATCH), None)
        note = ""
        if r is not None and tfr is not None and r.get("bound_ms") and tfr.get("bound_ms"):
            note = (f"the bandwidth bounds allow {tfr['bound_ms'] / r['bound_ms']:.1f}× "
                    f"({tfr['bound_ms']:.2f} / {r['bound_ms']:.2f} ms per step)")
        out.append(_judge("decode tokens/s / transformer-400m-eq (CUDA graph)", where,
                          None if r is None else r.get("graph_x_transformer"), "decode_x_transformer", why, note))
        out.append(_judge("decode time: bandwidth bound / measured (CUDA graph)", where,
                          None if r is None else r.get("graph_frac_of_bound"), "decode_frac_of_bound", why))
    return out


# ---- formatting -----------------------------------------------------------------------------------------


def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, float)):
        try:
            return format(v, spec)
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def table(head: list[str], lines: list[list[Any]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in ln) + " |" for ln in lines]
    return "\n".join(out)


def _val(r: Row, key: str, spec: str = ".3f") -> str:
    if key in r:
        return fmt(r[key], spec)
    err = next((r[k] for k in r if k.startswith(key.split("_")[0] + "_") and k.endswith("error")), None)
    return "error" if err else "–"


def targets_md(data: dict[str, Any]) -> str:
    lines = []
    for t in targets(data):
        v = t["value"]
        val = "–" if v is None else (f"{v:.1%}" if "frac" in t["goal"] or "floor" in t["target"] or "MFU" in
                                      t["target"] or "bound" in t["target"] else f"{v:.2f}")
        goal = t["goal"]
        if "MFU" in t["target"] or "floor" in t["target"] or "bound" in t["target"]:
            op, g = goal.split()
            goal = f"{op} {float(g):.0%}"
        lines.append([t["target"], t["where"], val, goal, f"**{t['status']}**" if t["status"] == "missed"
                      else t["status"], "–" if t["shortfall"] is None else f"{t['shortfall']:.2f}×", t["note"]])
    return table(["target", "where", "value", "target value", "status", "shortfall", "note"], lines)


def _ratio(r: Row, a: str, b: str) -> str:
    return fmt(r[a] / r[b], ".2f") if a in r and b in r else "–"


def _ssd_md(rows: list[Row]) -> str:
    head = ["L", "batch", "ours fwd", "mamba_ssm fwd", "fla fwd", "SDPA fwd", "floor fwd", "ours fwd+bwd",
            "mamba_ssm fwd+bwd", "fla fwd+bwd", "SDPA fwd+bwd", "floor fwd+bwd", "ours / mamba fwd",
            "ours / mamba fwd+bwd", "ours fwd / floor"]
    lines = []
    for r in rows:
        fla_fb = _val(r, "fla_fwdbwd_ms") if "fla_bwd_error" not in r else "refused"
        lines.append([r.get("L"), r.get("batch"), _val(r, "ours_fwd_ms"), _val(r, "mamba_ssm_fwd_ms"),
                      _val(r, "fla_fwd_ms"), _val(r, "sdpa_fwd_ms"), fmt(r.get("fwd_floor_ms")),
                      _val(r, "ours_fwdbwd_ms"), _val(r, "mamba_ssm_fwdbwd_ms"), fla_fb, _val(r, "sdpa_fwdbwd_ms"),
                      fmt(r.get("fwdbwd_floor_ms")), _ratio(r, "ours_fwd_ms", "mamba_ssm_fwd_ms"),
                      _ratio(r, "ours_fwdbwd_ms", "mamba_ssm_fwdbwd_ms"),
                      fmt(r["fwd_floor_ms"] / r["ours_fwd_ms"], ".1%") if "ours_fwd_ms" in r else "–"])
    txt = table(head, lines)
    acc = [[r.get("L"), fmt(r.get("rel_err_vs_mamba_ssm"), ".1e"), fmt(r.get("grad_rel_err_dx"), ".1e"),
            fmt(r.get("grad_rel_err_dA"), ".1e"), fmt(r.get("rel_err_fla_vs_ours"), ".1e"),
            fmt(r.get("rel_err_fla_dv_vs_ours_dx"), ".1e")] for r in rows]
    txt += "\n\nAgreement (relative L2 difference, bf16):\n\n" + table(
        ["L", "y ours vs mamba_ssm", "dx vs mamba_ssm", "dA vs mamba_ssm", "y fla (+D·x) vs ours",
         "fla dv (+D·dy) vs ours dx"], acc)
    first = rows[0] if rows else {}
    comp = [[k.replace("_first_", " first ").replace("_s", ""), fmt(v, ".1f")]
            for k, v in first.items() if "_first_" in k]
    if comp:
        txt += (f"\n\nFirst call at L = {first.get('L')} (seconds; includes autotuning and whatever compilation "
                "the peer-warm unit had not already put in Triton's cache):\n\n" + table(["impl / pass", "s"], comp))
    errs = sorted({f"{k}: {v}" for r in rows for k, v in r.items() if k.endswith("error")})
    if errs:
        txt += "\n\nErrors recorded:\n\n" + "\n".join(f"- `{e[:400]}`" for e in errs)
    return txt


def _scan_md(rows: list[Row]) -> str:
    lines = [[r.get("L"), r.get("batch"), _val(r, "ours_fwd_ms"), _val(r, "ours_channel_last_fwd_ms"),
              _val(r, "torch_chunked_fwd_ms"), fmt(r.get("fwd_floor_ms")), _val(r, "ours_fwdbwd_ms"),
              _val(r, "ours_channel_last_fwdbwd_ms"), _val(r, "torch_chunked_fwdbwd_ms"),
              fmt(r.get("fwdbwd_floor_ms")), fmt(r.get("ours_fwd_frac_of_floor"), ".1%"),
              fmt(r.get("ours_fwdbwd_frac_of_floor"), ".1%")] for r in rows]
    return table(["L", "batch", "ours fwd", "ours fwd (channel-last)", "torch fwd", "floor fwd", "ours fwd+bwd",
                  "ours fwd+bwd (channel-last)", "torch fwd+bwd", "floor fwd+bwd", "fwd / floor",
                  "fwd+bwd / floor"], lines)


def _step_md(rows: list[Row]) -> str:
    lines = [[r.get("batch"), fmt(r.get("floor_us"), ".1f"), fmt(r.get("ours_us"), ".1f"),
              fmt(r.get("mamba_ssm_us"), ".1f") if "mamba_ssm_us" in r else ("error" if "mamba_ssm_error" in r
                                                                             else "–"),
              fmt(r.get("torch_us"), ".1f"), fmt(r.get("ours_frac_of_floor"), ".1%"),
              fmt(r.get("rel_err_vs_mamba_ssm"), ".1e")] for r in rows]
    return table(["batch", "floor", "ours", "mamba_ssm", "torch", "ours / floor", "y vs mamba_ssm"], lines)


def _train_md(rows: list[Row]) -> str:
    base = {r["T"]: r["tokens_per_s"] for r in rows if r.get("model") == "transformer-400m-eq" and "tokens_per_s" in r}
    lines = []
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append([r.get("model"), r.get("T"), "–", "–", "–", "–", "–", "–", "–",
                          "error: " + str(r.get("error", "?"))[:80]])
            continue
        x = r["tokens_per_s"] / base[r["T"]] if r["T"] in base else None
        lines.append([r["model"], r["T"], r.get("batch"), fmt(r["step_ms"], ".1f"), f"{r['tokens_per_s'] / 1e3:.1f}K",
                      fmt(r.get("mfu_spec"), ".1%"), fmt(r.get("mfu"), ".1%"), fmt(r.get("peak_mem_GB"), ".1f"),
                      fmt(x, ".2f"), ""])
    return table(["model", "T", "batch", "step ms", "tokens/s", "MFU (datasheet)", "MFU (measured matmul)",
                  "peak GB", "× transformer-400m-eq", "note"], lines)


def _decode_md(rows: list[Row]) -> str:
    rows = with_decode_ratios(rows)
    ctxs = sorted({r["context"] for r in rows if "context" in r})
    keys: list[tuple[str, int]] = []
    for r in rows:
        if "context" in r and (r["model"], r["batch"]) not in keys:
            keys.append((r["model"], r["batch"]))
    cell = {(r["model"], r["batch"], r["context"]): r for r in rows if "context" in r}
    lines = []
    for m, b in sorted(keys, key=lambda k: ([x[0] for x in keys].index(k[0]), k[1])):
        out = [m, b]
        for c in ctxs:
            r = cell.get((m, b, c))
            if r is None or "graph_tokens_per_s" not in r:
                out.append("–" if r is None or "skipped" in r else "error")
            else:
                out.append(f"{r['graph_tokens_per_s']:,.0f} ({r['graph_ms']:.2f} / {r['bound_ms']:.2f} ms, "
                           f"{r['graph_frac_of_bound']:.0%})")
        lines.append(out)
    txt = table(["model", "batch", *[f"{c // 1024}K" for c in ctxs]], lines)
    skipped = [f"{r['model']} {r['context'] // 1024}K × {r['batch']}: {r['skipped']}" for r in rows if "skipped" in r]
    errors = [f"{r.get('model')} {r.get('context')} × {r.get('batch')}: {r['error'][:200]}" for r in rows if "error" in r]
    checks = [f"{r['model']}: {r.get('check')} = {fmt(r.get('max_rel_diff'), '.1e')}" for r in rows if "check" in r]
    if skipped:
        txt += "\n\nSkipped (do not fit):\n\n" + "\n".join(f"- {s}" for s in skipped)
    if errors:
        txt += "\n\nErrors:\n\n" + "\n".join(f"- `{e}`" for e in errors)
    if checks:
        txt += "\n\nChecks before timing:\n\n" + "\n".join(f"- {c}" for c in checks)
    return txt


def _sweep_md(rows: list[Row]) -> str:
    p0 = next((r["step_ms"] for r in rows if r.get("model") == "P=0" and "step_ms" in r), None)
    lines = [[r["model"], fmt(r.get("step_ms"), ".1f"),
              f"{r['tokens_per_s'] / 1e3:.1f}K" if "tokens_per_s" in r else "error",
              fmt(r["step_ms"] / p0, ".2f") if p0 and "step_ms" in r else "–", fmt(r.get("mfu_spec"), ".1%"),
              fmt(r.get("peak_mem_GB"), ".1f")] for r in rows]
    return table(["run", "step ms", "tokens/s", "step / P=0", "MFU (datasheet)", "peak GB"], lines)


def _ssd_shape(rows: list[Row]) -> str:
    r = rows[0] if rows else {}
    if "heads" not in r:
        return "shape: see the rows"
    return (f"b·L = {r['L'] * r['batch']} tokens, {r['heads']} heads × {r['headdim']}, d_state {r['d_state']}, "
            f"{r['groups']} group(s), chunk {r['chunk']}, {r.get('dtype', '?')}")


def _scan_shape(rows: list[Row]) -> str:
    r = rows[0] if rows else {}
    if "d_inner" not in r:
        return "shape: see the rows"
    return f"d_inner {r['d_inner']}, d_state {r['d_state']}, b·L = {r['L'] * r['batch']} tokens, {r.get('dtype', '?')}"


def _section(fn: Callable[[list[Row]], str], rows: dict[str, list[Row]], case: str) -> str:
    """One section's table; a section that cannot be built says so instead of failing the report."""
    if case not in rows:
        return "not run"
    try:
        return fn(rows[case])
    except Exception as err:  # noqa: BLE001
        return f"(table not built: {err!r})"


def build_report(data: dict[str, Any]) -> str:
    """targets.md: provenance, the targets table, then one section per part (op level, training, decode)."""
    meta = data.get("meta", {})
    rows = case_rows(data)
    procs = data.get("processes", [])
    parts = [f"# Performance targets: every number from one benchmark run ({meta.get('gpu', '?')})", "",
             f"GPU **{meta.get('gpu', '?')}**, torch {meta.get('torch', '?')}, triton {meta.get('triton', '?')}, "
             f"Python {meta.get('python', '?')}. Generated from `targets.json` by `benchmarks/report.py`; "
             "every value below is read from the rows (the targets are the constants at the top of `benchmarks/report.py`).", "",
             "## Provenance", "",
             table(["process", "pid", "command", "start (UTC)", "end (UTC)", "seconds", "alloc conf", "units"],
                   [[p["id"], p.get("pid"), f"`{p.get('command')}`", p.get("start_utc"), p.get("end_utc"),
                     fmt(p.get("seconds"), ".0f"), p.get("alloc_conf") or "–", ", ".join(p.get("units", []))]
                    for p in procs]), ""]
    units = data.get("units", {})
    parts += [table(["unit", "case", "status", "process", "attempts", "seconds", "rows", "error"],
                    [[n, u.get("case"), u.get("status"), u.get("process", "–"), u.get("attempts", 0),
                      fmt(u.get("seconds"), ".1f"),
                      len(u["rows"]) if "rows" in u else (f"{len(u['partial_rows'])} (partial)"
                                                           if u.get("partial_rows") else "–"),
                      (u.get("error") or "")[:120]] for n, u in units.items()]), ""]
    warm = case_rows(data).get("peer-warm", [])
    if warm:
        w = warm[0]
        parts += [f"Kernel compilation before timing (unit peer-warm, `benchmarks/cases/ops.py`): "
                  f"{fmt(w.get('seconds'), '.0f')} s in all; probe {fmt(w.get('probe_s'), '.0f')} s; "
                  f"{w.get('workers')} worker processes" + (f", exit codes {w.get('returncodes')}"
                                                            if w.get("returncodes") else "")
                  + (f" ({w['note']})" if w.get("note") else "") + ".", ""]
    ceil = [(p["id"], p.get("ceilings") or {}) for p in procs]
    parts += ["Measured ceilings per process (device copy bandwidth, read + write; bf16 8192³ matmul):", "",
              table(["process", "copy GB/s", "bf16 TFLOP/s"],
                    [[i, fmt(c.get("copy_GBps"), ".0f"), fmt(c.get("bf16_TFLOPs"), ".0f")] for i, c in ceil]), ""]
    try:
        tmd = targets_md(data)
    except Exception as err:  # noqa: BLE001
        tmd = f"(targets not computed: {err!r})"
    parts += ["## Targets", "", tmd, ""]
    parts += ["## (a) Op level", "",
              f"### SSD ({_ssd_shape(rows.get('ssd-op', []))}), ms", "",
              "fla = `chunk_simple_gla(q=C, k=dt·B, v=x, g=dt·A, scale=1)` (`benchmarks/cases/ops.py`), timed on "
              "the mapped inputs, without the D skip; SDPA = causal attention, 16 heads × 128, bf16, same token "
              "count.", ""]
    parts += [_section(_ssd_md, rows, "ssd-op"), "", "![ssd-op](ssd-op.png)", ""]
    parts += ["### Mamba-1 selective scan, ms", "",
              f"{_scan_shape(rows.get('scan-op', []))}. mamba_ssm's selective scan is a CUDA extension, "
              "not among the Triton peers, so the scan op has no peer timing here; its decode step is compared "
              "with mamba_ssm's Triton `selective_state_update` below.", "", _section(_scan_md, rows, "scan-op"),
              "", "![scan-op](scan-op.png)", ""]
    parts += ["### Decode step of one layer, µs", "", "SSD (64 heads × 64, d_state 128):", "",
              _section(_step_md, rows, "ssd-decode"), "",
              "Mamba-1 scan step:", "",
              _section(_step_md, rows, "scan-decode"), ""]
    parts += ["## (b) Training step", "", _section(_train_md, rows, "train-step"), "",
              "![train-step](train-step.png)", ""]
    parts += ["## (c) Decode (CUDA graph; cells: tokens/s (measured / bound ms, bound / measured))", "",
              _section(_decode_md, rows, "decode"), "", "![decode](decode.png)", ""]
    parts += ["## (d) Training step vs TransPoint P (T = 8192)", "",
              _section(_sweep_md, rows, "transpoint-sweep"), "",
              "![transpoint-sweep](transpoint-sweep.png)", ""]
    return "\n".join(parts)


# ---- the domain cases' tables ----------------------------------------------------------------------------


def _generation_md(rows: list[dict[str, Any]]) -> str:
    head = ("| model | context x batch | generate tok/s | first-call tok/s | "
            "captured step tok/s | generate / step | ms/token | bound ms | TTFT (s) | prefill peak GB | "
            "peak GB |")
    lines = [head, "|" + "---|" * 11]
    f = lambda r, k, fmt: format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "-"  # noqa: E731
    for r in rows:
        if "error" in r or "skipped" in r:
            why = r.get("error") or r["skipped"]
            lines.append(f"| {r['model']} | {r['context']} x {r['batch']} | {why} |")
            continue
        lines.append(f"| {r['model']} | {r['context']} x {r['batch']} | {f(r, 'generate_tok_s', ',.0f')} | "
                     f"{f(r, 'generate_cold_tok_s', ',.0f')} | "
                     f"{f(r, 'step_tok_s', ',.0f')} | "
                     f"{f(r, 'generate_frac', '.2f')} | "
                     f"{f(r, 'ms_per_token', '.3f')} | {f(r, 'bound_ms', '.3f')} | {f(r, 'ttft_s', '.3f')} | "
                     f"{f(r, 'prefill_peak_GB', '.1f')} | {f(r, 'peak_GB', '.1f')} |")
    return "\n".join(lines)


def _diffusion_md(rows: list[Row]) -> str:
    lines = [[r["device"], r["arch"], f"{r['params'] / 1e6:.1f}", r["tokens"], r["batch"],
              *([r["error"], "", ""] if "error" in r else
                [f"{r['memory_gib']:.3f}", f"{r['train_img_s']:.1f}", f"{r['forward_img_s']:.1f}"])] for r in rows]
    return table(["device", "arch", "params (M)", "tokens", "batch", "train-step memory (GiB)", "train img/s",
                  "forward img/s"], lines)


def _pointcloud_md(rows: list[Row]) -> str:
    lines = [[f"{r.get('gpu', 'cpu')} (b {r['batch']})", r["groups"],
              f"{'PoinTramba' if r['model'] == 'paper' else 'all-attention'} ({r['depth']} blocks)",
              f"{r['parameters'] / 1e6:.2f}", r["tokens"], f"{r['infer_clouds_per_s']:.1f}",
              f"{r['train_step_ms']:.1f}", f"{r.get('peak_mem_mib', r.get('peak_rss_mib')):.0f}"]
             for r in rows if "error" not in r]
    txt = table(["device", "G", "model", "params (M)", "tokens", "infer clouds/s", "train step ms", "peak MiB"], lines)
    errs = [f"- {r['device']} G {r['groups']} {r['model']}: {r['error']}" for r in rows if "error" in r]
    return "\n".join([txt, *errs])


def _serve_md(rows: list[Row]) -> str:
    return table(["clients", "largest batch", "requests/s", "tokens/s", "p50 latency (s)", "p99 latency (s)",
                  "p50 TTFT (s)", "p99 TTFT (s)"],
                 [[r["concurrency"], r.get("largest_batch", "-"), f"{r['requests_per_s']:.2f}",
                   f"{r['tokens_per_s']:.0f}", f"{r['p50_latency_s']:.3f}", f"{r['p99_latency_s']:.3f}",
                   f"{r['p50_ttft_s']:.3f}", f"{r['p99_ttft_s']:.3f}"] for r in rows])


TABLES: dict[str, Callable[[list[Row]], str]] = {
    "ssd-op": _ssd_md, "scan-op": _scan_md, "ssd-decode": _step_md, "scan-decode": _step_md,
    "train-step": _train_md, "transpoint-sweep": _sweep_md, "decode": _decode_md,
    "generation": _generation_md, "diffusion-scaling": _diffusion_md, "pointcloud": _pointcloud_md,
    "serve-load": _serve_md,
}


# ---- plots and files -------------------------------------------------------------------------------------


def plot_decode(rows: list[dict[str, Any]], ax_pair, batches=(1, 16, 64)) -> None:
    """Left: graph tokens/s vs context per model and batch; right: fraction of the bandwidth bound."""
    ax1, ax2 = ax_pair
    styles = {1: ":", 16: "-", 64: "--"}
    models = []
    for r in rows:
        if r.get("model") not in models:
            models.append(r["model"])
    for i, model in enumerate(models):
        color = f"C{i}"
        for b in batches:
            pts = [(r["context"], r["graph_tokens_per_s"], r["graph_frac_of_bound"]) for r in rows
                   if r.get("model") == model and r.get("batch") == b and "graph_tokens_per_s" in r]
            if not pts:
                continue
            xs, ys, fs = zip(*pts)
            ax1.plot(xs, ys, "o" + styles.get(b, "-"), color=color, label=f"{model} b={b}", ms=3)
            ax2.plot(xs, fs, "o" + styles.get(b, "-"), color=color, ms=3)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
    ax1.set_yscale("log")
    ax1.set_ylabel("decode tokens/s (CUDA graph)")
    ax2.set_ylabel("fraction of the bandwidth bound")
    ax2.set_ylim(0, 1.05)
    ax1.legend(fontsize=6, ncol=2)



def write_outputs(name: str, rows: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    """<out>/<name>.json (meta + rows), .csv, and the case's .md table and .png plot where it has them."""
    from benchmarks.common import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", {"meta": meta, "rows": rows})
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    try:
        if name in TABLES:
            (out / f"{name}.md").write_text(TABLES[name](rows) + "\n")
        plot(name, rows, out, meta)
    except Exception as err:  # noqa: BLE001 - a table or plot never fails a run
        print(f"table / plot {name}: {err!r}")


def plot(name: str, rows: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = f"{name} on {meta.get('gpu', '?')}"
    if name in ("ssd-op", "scan-op"):
        ssd = name == "ssd-op"
        impls = ((("ours", "o-"), ("mamba_ssm", "s--"), ("fla", "d-."), ("sdpa", "v-"), ("torch_chunked", "^:"))
                 if ssd else (("ours", "o-"), ("ours_channel_last", "o--"), ("torch_chunked", "^:"),
                              ("torch_sequential", "x:")))
        labels = {"sdpa": "SDPA causal 16x128", "fla": "fla simple_gla"}
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, kind in zip(axes, ("fwd", "fwdbwd")):
            for i, (impl, style) in enumerate(impls):
                pts = [(r["L"], r[f"{impl}_{kind}_ms"]) for r in rows if f"{impl}_{kind}_ms" in r]
                if pts:
                    ax.plot(*zip(*pts), style, color=f"C{i}", label=labels.get(impl, impl))
            ax.plot([r["L"] for r in rows], [r[f"{kind}_floor_ms"] for r in rows], "k-", lw=0.8, label="floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"sequence length L (batch = {rows[0]['L'] * rows[0]['batch']} / L)")
            ax.set_ylabel("ms")
            ax.set_title(f"{'SSD' if ssd else 'Mamba-1 selective scan'} {kind}")
            ax.legend(fontsize=7)
    elif name == "train-step":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for model in dict.fromkeys(r["model"] for r in rows):
            pts = sorted((r["T"], r["tokens_per_s"], r.get("mfu_spec") or r["mfu"]) for r in rows
                         if r["model"] == model and "mfu" in r)
            if pts:
                axes[0].plot([p[0] for p in pts], [p[1] / 1e3 for p in pts], "o-", label=model)
                axes[1].plot([p[0] for p in pts], [100 * p[2] for p in pts], "o-", label=model)
        for ax, lab in zip(axes, ("training K tokens/s", "MFU % (model FLOPs / datasheet bf16 peak)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"sequence length T ({rows[0].get('batch', 1) * rows[0]['T']} tokens per step)"
                          if rows and "batch" in rows[0] else "sequence length T")
            ax.set_ylabel(lab)
            ax.legend(fontsize=7)
    elif name == "transpoint-sweep":
        fig, ax = plt.subplots(figsize=(7, 4))
        pts = sorted((int(r["model"][2:]), r["step_ms"]) for r in rows
                     if r["model"].startswith("P=") and "step_ms" in r)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="TransMamba, constant P (all layers)")
        for r, style in zip([r for r in rows if not r["model"].startswith("P=") and "step_ms" in r], ("--", ":")):
            ax.axhline(r["step_ms"], ls=style, color="k" if style == "--" else "gray", label=r["model"])
        ax.set_xlabel("TransPoint P (T = 8192; P = 0: all SSM, P = 8192: all attention)")
        ax.set_ylabel("training step ms")
        ax.legend(fontsize=8)
    elif name == "decode":
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        plot_decode(rows, axes)
    else:
        return
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)
