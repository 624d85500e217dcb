"""The Report: what every stage did, every hazard found, every comparison made (contract §3).

It renders itself as report.json, report.md, in a terminal (rich) and in Jupyter (HTML)."""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from rich.console import Group
from rich.table import Table
from rich.text import Text

from dynexport.benchmark import BenchmarkRecord
from dynexport.hazards import Hazard, UnsupportedOp
from dynexport.precision import PrecisionResult
from dynexport.serving import ServingRecord
from dynexport.verify import Verification

SCHEMA = "dynexport.report/1"
StageName = Literal["load", "capture", "decompose", "onnx", "openvino", "verify", "precision",
                    "serving", "benchmark"]
StageStatus = Literal["ok", "failed", "skipped"]
_VERSIONED = ("dynexport", "torch", "onnx", "onnxruntime", "openvino")


@dataclass
class StageRecord:
    name: StageName
    status: StageStatus
    seconds: float = 0.0
    artifact: str | None = None
    error: str | None = None


def installed_versions(names: tuple[str, ...] = _VERSIONED) -> dict[str, str | None]:
    """The installed version of each distribution in `names` (None where missing)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass(repr=False)
class Report:
    """Everything dynexport learnt about one model."""

    script: str | None = None
    capture_strategy: str | None = None
    stages: list[StageRecord] = field(default_factory=list)
    hazards: list[Hazard] = field(default_factory=list)
    unsupported_ops: list[UnsupportedOp] = field(default_factory=list)
    verification: list[Verification] = field(default_factory=list)
    benchmark: list[BenchmarkRecord] = field(default_factory=list)
    precision: PrecisionResult | None = None  # --precision other than f32
    serving: list[ServingRecord] = field(default_factory=list)  # --layout
    versions: dict[str, str | None] = field(default_factory=installed_versions)

    @property
    def ok(self) -> bool:
        """Every stage that ran succeeded, verification passed, no hazard is an error."""
        return (all(stage.status != "failed" for stage in self.stages)
                and all(record.passed for record in self.verification)
                and not any(hazard.severity == "error" for hazard in self.hazards))

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)

    def sorted_hazards(self) -> list[Hazard]:
        return sorted(self.hazards, key=lambda h: h.sort_key)

    # --- renderings -------------------------------------------------------------------------
    def to_json(self) -> dict:
        data = {
            "schema": SCHEMA,
            "script": self.script,
            "ok": self.ok,
            "versions": self.versions,
            "capture": {"strategy": self.capture_strategy},
            "stages": [asdict(stage) for stage in self.stages],
            "hazards": [hazard.to_json() for hazard in self.sorted_hazards()],
            "unsupported_ops": [op.to_json() for op in self.unsupported_ops],
            "verification": [_finite(record.to_json()) for record in self.verification],
            "benchmark": [record.to_json() for record in self.benchmark],
        }
        # Optional keys (contract §3): present only when --precision / --layout asked for them.
        if self.precision is not None:
            data["precision"] = _finite(self.precision.to_json())
        if self.serving:
            data["serving"] = [record.to_json() for record in self.serving]
        return data

    def write(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write report.json and report.md into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, md_path = directory / "report.json", directory / "report.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        md_path.write_text(self.to_markdown())
        return json_path, md_path

    def to_markdown(self) -> str:
        lines = [f"# dynexport report: {self.script or 'model'}", "",
                 f"**Result: {'OK' if self.ok else 'FAILED'}**"
                 + (f" — captured with `{self.capture_strategy}` export"
                    if self.capture_strategy else ""), ""]
        if self.stages:
            lines += ["## Stages", "", "| stage | status | seconds | artifact | error |",
                      "|---|---|---|---|---|"]
            lines += [f"| {s.name} | {s.status} | {s.seconds:.2f} | {s.artifact or ''} | "
                      f"{_md_cell(s.error)} |" for s in self.stages]
            lines.append("")
        lines += ["## Hazards", ""]
        if self.hazards:
            lines += ["| severity | category | location | code | message | fix |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {h.severity} | {h.category} | {_where(h.file, h.line)} | "
                      f"`{_md_cell(h.code)}` | {_md_cell(h.message)} | {_md_cell(h.fix)} |"
                      for h in self.sorted_hazards()]
        else:
            lines.append("None found.")
        lines.append("")
        if self.unsupported_ops:
            lines += ["## Unsupported ops", "", "| op | backend | count | location |",
                      "|---|---|---|---|"]
            lines += [f"| `{u.op}` | {u.backend} | {u.count} | {_where(u.file, u.line)} |"
                      for u in self.unsupported_ops]
            lines.append("")
        if self.verification:
            lines += ["## Verification against eager PyTorch", "",
                      "| runtime | inputs | output | max abs diff | max rel diff | passed |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {v.runtime} | {v.inputs} | {v.output} | {v.max_abs_diff:.3g} | "
                      f"{v.max_rel_diff:.3g} | {'yes' if v.passed else 'NO'} |"
                      + (f" {_md_cell(v.error)}" if v.error else "")
                      for v in self.verification]
            lines.append("")
        if self.precision is not None:
            p = self.precision
            lines += [f"## Precision {p.precision} against f32", "",
                      f"OpenVINO computes in {p.inference_precision}: {p.median_ms:.2f} ms "
                      f"against {p.f32_median_ms:.2f} ms at f32 ({p.speedup:.2f}× faster)"
                      + (f"; calibrated on {p.calibration_samples} inputs"
                         if p.calibration_samples else "") + ".", "",
                      "| inputs | output | max abs diff | label agreement |", "|---|---|---|---|"]
            lines += [f"| {c.inputs} | {c.output} | {c.max_abs_diff:.3g} | "
                      f"{_percent(c.label_agreement)} |" for c in p.comparisons]
            lines.append("")
        if self.serving:
            lines += ["## Serving", "", "| layout | repository | model |", "|---|---|---|"]
            lines += [f"| {s.layout} | {s.repository} | {s.model} |" for s in self.serving]
            lines.append("")
        if self.benchmark:
            lines += ["## Benchmark", "", "| runtime | precision | median ms | min ms | max ms | "
                      "runs |", "|---|---|---|---|---|---|"]
            lines += [f"| {b.runtime} | {b.precision or ''} | {b.median_ms:.2f} | "
                      f"{_ms(b.min_ms)} | {_ms(b.max_ms)} | {b.runs} |" for b in self.benchmark]
            lines.append("")
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        return "\n".join(lines)

    def __repr__(self) -> str:
        errors = sum(h.severity == "error" for h in self.hazards)
        return (f"<dynexport Report {self.script or ''}: {'OK' if self.ok else 'FAILED'}, "
                f"{len(self.hazards)} hazards ({errors} errors), "
                f"{len(self.unsupported_ops)} unsupported ops>")

    def __str__(self) -> str:
        return self.to_markdown()

    def __rich__(self) -> Group:
        parts: list = [Text(f"Result: {'OK' if self.ok else 'FAILED'}",
                            style="bold green" if self.ok else "bold red")]
        if self.stages:
            parts.append(_table("Stages", ("stage", "status", "seconds", "artifact / error"), [
                (s.name, Text(s.status, style=_STATUS_STYLE[s.status]), f"{s.seconds:.2f}",
                 s.error.splitlines()[0][:120] if s.error else (s.artifact or ""))
                for s in self.stages]))
        parts.append(self._rich_hazards())
        if self.unsupported_ops:
            parts.append(_table("Unsupported ops", ("op", "backend", "count", "location"), [
                (u.op, u.backend, str(u.count), _where(u.file, u.line, short=True))
                for u in self.unsupported_ops]))
        if self.verification:
            parts.append(_table(
                "Verification against eager PyTorch",
                ("runtime", "inputs", "output", "max abs", "max rel", "passed"),
                [(v.runtime, v.inputs, v.output, f"{v.max_abs_diff:.3g}", f"{v.max_rel_diff:.3g}",
                  Text("yes", style="green") if v.passed else
                  Text("NO" + (f" ({v.error})" if v.error else ""), style="red"))
                 for v in self.verification]))
        if self.precision is not None:
            p = self.precision
            parts.append(_table(
                f"Precision {p.precision} against f32: {p.speedup:.2f}× faster "
                f"({p.median_ms:.1f} ms vs {p.f32_median_ms:.1f} ms, computes in "
                f"{p.inference_precision})",
                ("inputs", "output", "max abs diff", "label agreement"),
                [(c.inputs, c.output, f"{c.max_abs_diff:.3g}", _percent(c.label_agreement))
                 for c in p.comparisons]))
        if self.serving:
            parts.append(_table("Serving", ("layout", "repository", "model"),
                                [(s.layout, s.repository, s.model) for s in self.serving]))
        if self.benchmark:
            parts.append(_table(
                "Benchmark", ("runtime", "precision", "median ms", "min ms", "max ms", "runs"),
                [(b.runtime, b.precision or "", f"{b.median_ms:.2f}", _ms(b.min_ms),
                  _ms(b.max_ms), str(b.runs)) for b in self.benchmark]))
        return Group(*parts)

    def _rich_hazards(self) -> Text:
        if not self.hazards:
            return Text("Hazards: none found", style="green")
        text = Text(f"Hazards ({len(self.hazards)})\n", style="bold")
        for h in self.sorted_hazards():
            text.append(f"{h.severity:7} ", style="red" if h.severity == "error" else "yellow")
            text.append(f"{h.category}  ", style="bold")
            text.append(_where(h.file, h.line, short=True) + "\n", style="cyan")
            if h.code:
                text.append(f"        {h.code}\n", style="dim")
            text.append(f"        {h.message}\n")
            text.append(f"        fix: {h.fix}\n", style="green")
        return text

    def _repr_html_(self) -> str:
        status = "OK" if self.ok else "FAILED"
        rows = "".join(
            f"<tr><td>{h.severity}</td><td>{h.category}</td>"
            f"<td>{html.escape(_where(h.file, h.line, short=True))}</td>"
            f"<td><code>{html.escape(h.code or '')}</code></td>"
            f"<td>{html.escape(h.message)}<br><b>Fix:</b> {html.escape(h.fix)}"
            + (f"<details><summary>torch says</summary><pre>{html.escape(h.detail)}</pre>"
               "</details>" if h.detail else "")
            + "</td></tr>" for h in self.sorted_hazards())
        hazards = (f"<table><tr><th>severity</th><th>category</th><th>location</th><th>code</th>"
                   f"<th>message and fix</th></tr>{rows}</table>" if rows
                   else "<p>No hazards found.</p>")
        ops = "".join(f"<li><code>{html.escape(u.op)}</code> ({u.backend}, ×{u.count}) at "
                      f"{html.escape(_where(u.file, u.line, short=True))}</li>"
                      for u in self.unsupported_ops)
        checks = "".join(f"<tr><td>{v.runtime}</td><td>{v.inputs}</td><td>{html.escape(v.output)}"
                         f"</td><td>{v.max_abs_diff:.3g}</td><td>{'yes' if v.passed else 'NO'}"
                         "</td></tr>" for v in self.verification)
        return (f"<div><h3>dynexport: {status}</h3>{hazards}"
                + (f"<h4>Unsupported ops</h4><ul>{ops}</ul>" if ops else "")
                + (f"<h4>Verification</h4><table><tr><th>runtime</th><th>inputs</th>"
                   f"<th>output</th><th>max abs diff</th><th>passed</th></tr>{checks}</table>"
                   if checks else "") + "</div>")


_STATUS_STYLE = {"ok": "green", "failed": "red", "skipped": "dim"}


def _table(title: str, columns: tuple[str, ...], rows: list[tuple]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _where(file: str | None, line: int | None, short: bool = False) -> str:
    if not file:
        return ""
    name = Path(file).name if short else file
    return f"{name}:{line}" if line else name


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f} %"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _md_cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _finite(data: dict) -> dict:
    """JSON has no infinity: a comparison that could not run is recorded as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in data.items()}
