"""The sweep's table: a row per script, made from what its processes did and the files they
left (report.json, raw.json), and its renderings: sweep.json (schema `dynexport.sweep/1`),
sweep.md and sweep.html. Rows are made where the files are, after a local or a Ray run alike,
so both backends give the same table."""

from __future__ import annotations

import html
import json
import re
import signal
from pathlib import Path
from typing import Any

from dynexport.sweep.plan import Job
from dynexport.sweep.raw import ATOL, ROUTES, RTOL, RUNTIME, first_line
from dynexport.sweep.run import DYNEXPORT_DIR, DYNEXPORT_LOG, RAW_DIR, RAW_LOG

SCHEMA = "dynexport.sweep/1"
ROUTE_TITLE = {"onnx": "ONNX+ORT", "openvino": "OpenVINO"}


# --- rows -------------------------------------------------------------------------------------

def make_row(job: Job, outcome: dict[str, Any], out: Path, fingerprint: str) -> dict[str, Any]:
    """The row of `job` whose processes did `outcome`, its files in out/<job.name>."""
    folder = out / job.name
    report_path = folder / DYNEXPORT_DIR / "report.json"
    row: dict[str, Any] = {
        "script": job.script, "name": job.name, "exit": outcome["exit"],
        "report": report_path.relative_to(out).as_posix() if report_path.is_file() else None,
        "seconds": outcome["seconds"], "error": None, "timed_out": outcome["timed_out"],
        "args": job.args, "options": job.options, "fingerprint": fingerprint, "reused": False}
    if report_path.is_file():
        row.update(_from_report(json.loads(report_path.read_text())))
    row["error"] = _error(row, outcome, job, folder / DYNEXPORT_LOG)
    if row["exit"] is not None and row["exit"] < 0:  # not an exit status: a signal ended it
        number = -row["exit"]
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ \
            else f"signal {number}"
        row["exit"] = None
        row["error"] = (f"the dynexport process was ended by {name}"
                        + (" (out of memory?)" if name == "SIGKILL" else ""))
    if outcome.get("worker_error"):  # a Ray worker died under it, twice
        row["error"] = outcome["worker_error"]
    if job.raw:
        row["raw"] = _raw(outcome["raw"], job, folder)
        row["rule"] = rule(row, row["raw"])
        row["fixed"] = fixed(row, row["raw"])
    return row


def _from_report(report: dict[str, Any]) -> dict[str, Any]:
    """What the table needs from a dynexport report.json."""
    found: dict[str, Any] = {"strategy": report["capture"]["strategy"]}
    found["stages"] = {s["name"]: {"status": s["status"], "error": s["error"]}
                       for s in report["stages"]}
    found["hazards"] = [f"{h['severity']} {h['category']}"
                        + (f" at {Path(h['file']).name}:{h['line']}" if h["file"] else "")
                        for h in report["hazards"]]
    found["unsupported_ops"] = [f"{u['op']} ({u['backend']})" for u in report["unsupported_ops"]]
    found["handled"] = [_short(h["what"])
                        + (f" at {Path(h['file']).name}:{h['line']}" if h.get("file") else "")
                        for h in report.get("handled", [])]
    found["op_rewrites"] = [text for text, h in zip(found["handled"], report.get("handled", []),
                                                    strict=True) if h.get("op_rewrite")]
    for route in ROUTES:
        rows = [v for v in report["verification"] if v["runtime"] == RUNTIME[route]]
        errors = [f"{v['inputs']}: {first_line(v['error'])}" for v in rows if v.get("error")]
        found[route] = {"stage": found["stages"].get(route, {}).get("status"),
                        "rows": len(rows), "errors": errors,
                        "verified": bool(rows) and all(v["passed"] for v in rows),
                        "max_abs": max((v["max_abs_diff"] for v in rows
                                        if v["max_abs_diff"] is not None), default=None)}
    found["culprit"] = _culprit(report.get("divergence") or [])
    return found


def _short(text: str, limit: int = 100) -> str:
    """The first sentence of `text`, at most `limit` characters."""
    sentence = re.split(r"(?<!e\.g)(?<!i\.e)\. |; ", text)[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[:limit - 1] + "…"


def _culprit(divergence: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first divergence's most responsible op, at the user's line."""
    for entry in divergence:
        for culprit in entry["culprits"][:1]:
            return {"runtime": entry["runtime"], "precision": entry["precision"],
                    "inputs": entry["inputs"], "cause": entry["cause"], "op": culprit["op"],
                    "file": culprit["file"], "line": culprit["line"], "code": culprit["code"]}
        return {"runtime": entry["runtime"], "precision": entry["precision"],
                "inputs": entry["inputs"], "cause": entry["cause"], "op": None,
                "file": None, "line": None, "code": None}
    return None


def _log_tail(log: Path) -> str | None:
    """The last line of a run's console output that says something."""
    if not log.is_file():
        return None
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line and not set(line) <= set("─━│┃└┘┌┐├┤┴┬┼ ")]
    return lines[-1][:300] if lines else None


def _error(row: dict[str, Any], outcome: dict[str, Any], job: Job, log: Path) -> str | None:
    """Why the run did not exit 0, in one line: the timeout, the first failed stage, the first
    failed verification, or the end of its console output."""
    if outcome["timed_out"]:
        return (f"timed out: still running after {job.timeout:g} s (--timeout), ended with "
                "its child processes")
    if row["exit"] == 0:
        return None
    for stage, entry in row.get("stages", {}).items():
        if entry["status"] == "failed":
            return f"{stage}: {first_line(entry['error'] or '')}"[:300]
    for route in ROUTES:
        for error in row.get(route, {}).get("errors", [])[:1]:
            return f"{RUNTIME[route]} on {error}"[:300]
    errors = [h for h in row.get("hazards", []) if h.startswith("error ")]
    if errors:
        return f"hazard: {errors[0]}"
    if row.get("culprit"):
        return f"divergence: {culprit_cell(row)}"
    return _log_tail(log) or f"exited {row['exit']} without output"


def _raw(outcome: dict[str, Any], job: Job, folder: Path) -> dict[str, Any]:
    """The raw route's result (raw.json), or why there is none."""
    raw_json = folder / RAW_DIR / "raw.json"
    if outcome.get("error"):  # the Ray task was lost
        raw = {"export": {"ok": False, "error": outcome["error"]}}
    elif raw_json.is_file():
        raw = json.loads(raw_json.read_text())
    elif outcome["timed_out"]:
        raw = {"export": {"ok": False, "error": f"timed out after {job.timeout:g} s"}}
    else:
        raw = {"export": {"ok": False, "error": f"raw run exited {outcome['exit']}: "
                          + (_log_tail(folder / RAW_LOG) or "?")}}
    raw["seconds"] = outcome["seconds"]
    return raw


def rule(dx: dict[str, Any], raw: dict[str, Any]) -> dict[str, str]:
    """Per route: where the raw route works, dynexport's stage and verification must work
    too; `exit`: where every raw route works, dynexport must exit 0."""
    verdict = {}
    for route in ROUTES:
        raw_ok = raw.get(route, {}).get("ok", False)
        dx_ok = dx.get(route, {}).get("stage") == "ok" and dx.get(route, {}).get("verified")
        verdict[route] = ("ok" if dx_ok else "VIOLATED") if raw_ok else "n/a"
    if all(raw.get(route, {}).get("ok", False) for route in ROUTES):
        verdict["exit"] = "ok" if dx["exit"] == 0 else "VIOLATED"
    else:
        verdict["exit"] = "n/a"
    return verdict


def fixed(dx: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """Where a raw route failed and dynexport's passed: the routes, and what dynexport's
    report lists as op rewrites among what it handled (ops it decomposed, translated,
    supplied or patched: what the raw tools lacked)."""
    routes = [route for route in ROUTES if not raw.get(route, {}).get("ok", False)
              and dx.get(route, {}).get("stage") == "ok" and dx.get(route, {}).get("verified")]
    if not routes:
        return []
    return [f"{', '.join(ROUTE_TITLE[r] for r in routes)}: "
            + ("; ".join(dx.get("op_rewrites", [])) or "no op rewrite listed in `handled`")]


# --- cells ------------------------------------------------------------------------------------

def cell_raw(raw: dict[str, Any], route: str) -> str:
    if not raw["export"]["ok"]:
        return "- (export failed)"
    entry = raw.get(route, {})
    if entry.get("ok"):
        worst = max(c["max_abs"] for c in entry["checks"].values())
        return f"pass ({worst:.1e})"
    if entry.get("stage") == "compare":
        bad = [k for k, c in entry["checks"].items() if not c["passed"]]
        return f"mismatch on {', '.join(bad)}"
    return f"FAIL ({entry.get('stage', '?')})"


def cell_dx(row: dict[str, Any], route: str) -> str:
    entry = row.get(route)
    if not entry or entry["stage"] is None:
        return "-"
    if entry["stage"] == "skipped":
        return "skipped"
    if entry["stage"] != "ok":
        return "FAIL (convert)"
    if not entry["rows"]:
        return "converted, not verified"
    if entry["verified"]:
        return f"pass ({entry['max_abs']:.1e})"
    return "FAIL (run)" if entry.get("errors") else "mismatch"


def cell_exit(row: dict[str, Any]) -> str:
    return "timeout" if row["timed_out"] else "-" if row["exit"] is None else str(row["exit"])


def _cell_hazards(row: dict[str, Any]) -> str:
    found = row.get("hazards", []) + row.get("unsupported_ops", [])
    return f"{len(found)}: " + "; ".join(found) if found else "none"


def culprit_cell(row: dict[str, Any]) -> str:
    """The top culprit of the first divergence: where, which op, which run."""
    found = row.get("culprit")
    if not found:
        return "-"
    run = f"{found['runtime']} {found['precision']} {found['inputs']}, {found['cause']}"
    if not found["op"]:
        return f"{run}: (not found)"
    where = f" at {Path(found['file']).name}:{found['line']}" if found["file"] else ""
    code = f" `{found['code']}`" if found["code"] else ""
    return f"{run}: {found['op']}{where}{code}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def columns(rows: list[dict[str, Any]], links: bool) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells: with the raw route's columns when the sweep ran it, and
    a link to each report when `links`."""
    with_raw = any("raw" in row for row in rows)
    head = ["script", "dynexport exit" if with_raw else "exit", "capture"]
    for route in ROUTES:
        head.append(f"dynexport {ROUTE_TITLE[route]}" if with_raw else ROUTE_TITLE[route])
        if with_raw:
            head.append(f"raw {ROUTE_TITLE[route]}")
    if with_raw:
        head += ["raw torch.export", "rule"]
    head += ["hazards", *(["dynexport fixed"] if with_raw else []), "culprit",
             "dynexport s" if with_raw else "seconds", *(["raw s"] if with_raw else []),
             *(["report"] if links else [])]
    body = []
    for row in rows:
        cells = [row["script"], cell_exit(row), row.get("strategy") or "-"]
        for route in ROUTES:
            cells.append(cell_dx(row, route))
            if with_raw:
                cells.append(cell_raw(row["raw"], route))
        if with_raw:
            cells += ["ok" if row["raw"]["export"]["ok"] else "FAIL",
                      ", ".join(f"{k} {v}" for k, v in row["rule"].items())]
        cells += [_cell_hazards(row), *(["; ".join(row["fixed"]) or "-"] if with_raw else []),
                  culprit_cell(row), _seconds(row["seconds"]),
                  *([_seconds(row["raw"]["seconds"])] if with_raw else [])]
        if links:
            cells.append(row["report"] or "-")
        body.append(cells)
    return head, body


# --- renderings -------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], links: bool = True) -> str:
    """The table as markdown; a report cell links report.md next to the report.json."""
    head, body = columns(rows, links)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, cells in zip(rows, body, strict=True):
        if links and row["report"]:
            cells = [*cells[:-1], f"[report]({_report_md(row['report'])})"]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _report_md(report_json: str) -> str:
    return report_json.rsplit("/", 1)[0] + "/report.md"


def failures(rows: list[dict[str, Any]]) -> list[str]:
    """One line per failure: which run, which stage, the error's first meaningful line."""
    lines = []
    for row in rows:
        name = row["script"]
        for stage, entry in row.get("stages", {}).items():
            if entry["status"] == "failed":
                lines.append(f"- **{name}**, dynexport `{stage}`: "
                             f"{first_line(entry['error'] or '')[:300]}")
        for route in ROUTES:
            for error in row.get(route, {}).get("errors", [])[:1]:
                lines.append(f"- **{name}**, dynexport {RUNTIME[route]} on {error[:300]}")
        if row["error"] and "stages" not in row:
            lines.append(f"- **{name}**, dynexport: {row['error']}")
        raw = row.get("raw")
        if raw is None:
            continue
        if not raw["export"]["ok"]:
            lines.append(f"- **{name}**, raw `torch.export.export`: {raw['export']['error']}")
        for route in ROUTES:
            entry = raw.get(route, {})
            if entry and not entry.get("ok"):
                what = entry.get("error") or json.dumps(entry.get("checks"))
                lines.append(f"- **{name}**, raw {route} ({entry.get('stage')}): {what}")
    return lines or ["- none"]


RAW_METHOD = (
    "The raw route: `torch.export.export` with the script's `dynamic_shapes`, then "
    "`torch.onnx.export(ep, dynamo=True)` + onnxruntime "
    "(2 threads) and `openvino.convert_model(ep)` + OpenVINO CPU pinned to f32, compared with "
    f"eager PyTorch on the example and the probe input (same shapes, max abs diff <= {ATOL} + "
    f"{RTOL} x max |eager|). A cell shows pass with the largest abs diff, the stage that "
    "failed, or the input that mismatched. `rule`: where a raw route works on its own, "
    "dynexport's corresponding stage and verification must work too, and where both raw "
    "routes work dynexport must exit 0 (`exit`); `n/a`: the raw route failed, nothing to "
    "check. `dynexport fixed`: the routes where the raw tools failed and dynexport passed, "
    "with the ops its report lists as rewritten (`handled` entries with `op_rewrite`). "
    "`culprit`: the op a divergence was localised to "
    "(report `divergence`), at the user's line.")


def write_json(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps({"schema": SCHEMA, **meta, "rows": rows}, indent=1))


def write_markdown(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any],
                   changes: str | None) -> None:
    text = ["# dynexport sweep", "",
            f"{len(rows)} scripts, {sum(r['exit'] == 0 for r in rows)} exited 0; "
            f"{meta['created']}, {meta['backend']}; versions: "
            + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", ""]
    if any("raw" in row for row in rows):
        text += ["With `--raw`, each script also went through the raw tools. " + RAW_METHOD,
                 ""]
    text += [markdown_table(rows), "", "## Failures", "", *failures(rows), ""]
    if changes:
        text += [changes, ""]
    path.write_text("\n".join(text))


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top}th{background:#f0f0f0;position:sticky;top:0}tr.ok td:nth-child(2){
background:#dff5df}tr.failed td:nth-child(2){background:#f8d7d7}td.err{color:#a00}"""


def write_html(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any],
               changes: list[dict[str, Any]] | None) -> None:
    """A page with the table (each script's report linked), failures, and the comparison."""
    head, body = columns(rows, links=True)
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>dynexport sweep</title>",
           f"<style>{_STYLE}</style></head><body><h1>dynexport sweep</h1>",
           f"<p>{len(rows)} scripts, {sum(r['exit'] == 0 for r in rows)} exited 0; "
           f"{html.escape(meta['created'])}, {html.escape(meta['backend'])}; versions: "
           + html.escape(", ".join(f"{k} {v}" for k, v in meta["versions"].items())) + "</p>"]
    if any("raw" in row for row in rows):
        out.append(f"<p>With --raw, each script also went through the raw tools. "
                   f"{html.escape(RAW_METHOD)}</p>")
    out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
    for row, cells in zip(rows, body, strict=True):
        rendered = [html.escape(c) for c in cells]
        if row["report"]:
            rendered[-1] = (f"<a href='{html.escape(_report_md(row['report']))}'>report.md</a> "
                            f"<a href='{html.escape(row['report'])}'>json</a>")
        klass = "ok" if row["exit"] == 0 else "failed"
        out.append(f"<tr class='{klass}'>" + "".join(f"<td>{c}</td>" for c in rendered)
                   + "</tr>")
        if row["error"]:
            out.append(f"<tr><td></td><td class='err' colspan='{len(head) - 1}'>"
                       f"{html.escape(row['error'])}</td></tr>")
    out.append("</table>")
    if changes is not None:
        out.append("<h2>Compared with the earlier sweep</h2>")
        if changes:
            out.append("<table><tr><th>script</th><th>what</th><th>before</th><th>now</th>"
                       "<th>change</th></tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c[k]))}</td>" for k in
                                     ("script", "what", "old", "new", "change")) + "</tr>"
                    for c in changes]
            out.append("</table>")
        else:
            out.append("<p>no differences</p>")
    out.append("</body></html>")
    path.write_text("\n".join(out))
