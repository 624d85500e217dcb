"""The regression view (`--compare OLD.json`): what got better, worse or only changed between
an earlier sweep and this one, script by script (matched by their folder name)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynexport.sweep.raw import ROUTES
from dynexport.sweep.table import (
    ROUTE_TITLE,
    SCHEMA,
    cell_dx,
    cell_exit,
    cell_raw,
    culprit_cell,
)

# A run's time is reported only past both: wall times of a shared machine move by tens of %.
SLOWER_FACTOR, SLOWER_SECONDS = 2.0, 10.0


class CompareError(ValueError):
    """OLD.json is not a sweep.json (the sweep exits 2)."""


def load_rows(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"--compare {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CompareError(f"--compare {path} is not a sweep.json (schema {SCHEMA!r})")
    return data["rows"]


def _change(script: str, what: str, old: Any, new: Any, change: str) -> dict[str, Any]:
    return {"script": script, "what": what, "old": old, "new": new, "change": change}


def _direction(old_good: bool, new_good: bool) -> str:
    return "changed" if old_good == new_good else "better" if new_good else "worse"


def compare(old_rows: list[dict[str, Any]], new_rows: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """Each difference that matters: exit status, each route's verification (and the raw
    route's), hazards, the divergence culprit, scripts added or gone, and times that moved by
    more than SLOWER_FACTOR and SLOWER_SECONDS."""
    old = {row["name"]: row for row in old_rows}
    new = {row["name"]: row for row in new_rows}
    changes = []
    for name, row in new.items():
        before = old.get(name)
        script = row["script"]
        if before is None:
            changes.append(_change(script, "script", "-", cell_exit(row), "new"))
            continue
        if cell_exit(before) != cell_exit(row):
            changes.append(_change(script, "exit", cell_exit(before), cell_exit(row),
                                   _direction(before["exit"] == 0, row["exit"] == 0)))
        for route in ROUTES:
            was, now = cell_dx(before, route), cell_dx(row, route)
            if _status(was) != _status(now):
                changes.append(_change(script, f"dynexport {ROUTE_TITLE[route]}", was, now,
                                       _direction(was.startswith("pass"),
                                                  now.startswith("pass"))))
            if "raw" in before and "raw" in row:
                was, now = cell_raw(before["raw"], route), cell_raw(row["raw"], route)
                if _status(was) != _status(now):
                    changes.append(_change(script, f"raw {ROUTE_TITLE[route]}", was, now,
                                           _direction(was.startswith("pass"),
                                                      now.startswith("pass"))))
        was, now = _hazards(before), _hazards(row)
        if was != now:
            changes.append(_change(script, "hazards", "; ".join(was) or "none",
                                   "; ".join(now) or "none",
                                   "worse" if len(now) > len(was) else
                                   "better" if len(now) < len(was) else "changed"))
        was, now = culprit_cell(before), culprit_cell(row)
        if was != now:
            changes.append(_change(script, "culprit", was, now,
                                   "worse" if was == "-" else "better" if now == "-"
                                   else "changed"))
        changes += _time(script, before.get("seconds"), row.get("seconds"))
    changes += [_change(row["script"], "script", cell_exit(row), "-", "removed")
                for name, row in old.items() if name not in new]
    return changes


def _status(cell: str) -> str:
    """A cell without its numbers: `pass (3.6e-07)` and `pass (4.1e-07)` are the same."""
    return cell.split(" (")[0] if cell.startswith("pass") else cell


def _hazards(row: dict[str, Any]) -> list[str]:
    return row.get("hazards", []) + row.get("unsupported_ops", [])


def _time(script: str, old: float | None, new: float | None) -> list[dict[str, Any]]:
    if not old or not new:
        return []
    if new > old * SLOWER_FACTOR and new - old > SLOWER_SECONDS:
        return [_change(script, "seconds", old, new, "slower")]
    if old > new * SLOWER_FACTOR and old - new > SLOWER_SECONDS:
        return [_change(script, "seconds", old, new, "faster")]
    return []


def markdown(changes: list[dict[str, Any]], old_path: Path) -> str:
    lines = [f"## Compared with {old_path}", ""]
    if not changes:
        return "\n".join(lines + ["no differences"])
    lines += ["| script | what | before | now | change |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c[k]).replace("|", "\\|") for k in
                                ("script", "what", "old", "new", "change")) + " |"
              for c in changes]
    return "\n".join(lines)
