"""The Report: what every stage did, every hazard found, what dynexport handled by itself and
every comparison made (contract §3).

Each record knows its columns and cells (`COLUMNS`, `cells()`) and its JSON (`to_json()`); a
`Section` renders a list of records as markdown, rich and HTML alike, and the Report composes
the sections, so the four renderings (report.json, report.md, terminal, Jupyter) cannot
drift apart."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.text import Text

from dynexport.benchmark import BenchmarkRecord
from dynexport.hazards.records import Handled, Hazard, UnsupportedOp, where
from dynexport.localization.records import Divergence
from dynexport.measure import Accuracy
from dynexport.precision import PrecisionResult
from dynexport.section import STYLES, Section
from dynexport.serving import ServingRecord
from dynexport.stage import StageRecord
from dynexport.verify import Verification

SCHEMA = "dynexport.report/1"
_VERSIONED = ("dynexport", "torch", "onnx", "onnxruntime", "openvino")
# Words of a cell that colour its row in a terminal.


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
    handled: list[Handled] = field(default_factory=list)
    unsupported_ops: list[UnsupportedOp] = field(default_factory=list)
    verification: list[Verification] = field(default_factory=list)
    benchmark: list[BenchmarkRecord] = field(default_factory=list)
    precision: PrecisionResult | None = None  # --precision other than f32
    serving: list[ServingRecord] = field(default_factory=list)  # --layout
    accuracy: Accuracy | None = None  # the script's metric on its validation data
    divergence: list[Divergence] = field(default_factory=list)  # where a model left eager
    versions: dict[str, str | None] = field(default_factory=installed_versions)
    notes: list[str] = field(default_factory=list)  # what a stage could only judge partly

    @property
    def ok(self) -> bool:
        """Every stage that ran succeeded, verification passed, no hazard is an error, and no
        converted model diverges other than by a reduced precision's rounding (a kernel that
        races fails the run even where this run's verification agreed)."""
        return (all(stage.status != "failed" for stage in self.stages)
                and all(record.passed for record in self.verification)
                and not any(hazard.severity == "error" for hazard in self.hazards)
                and all(entry.cause == "precision" for entry in self.divergence))

    def sorted_hazards(self) -> list[Hazard]:
        return sorted(self.hazards, key=lambda h: h.sort_key)

    def sections(self) -> list[Section]:
        """The report's tables, in reading order; empty optional ones left out."""
        sections = [Section.of("Stages", self.stages)] if self.stages else []
        sections.append(Section.of("Hazards", self.sorted_hazards(),
                                   None if self.hazards else "none found"))
        precision, accuracy = self.precision, self.accuracy
        optional = [
            ("Handled by dynexport", self.handled, None),
            ("Unsupported ops", self.unsupported_ops, None),
            ("Verification against eager PyTorch", self.verification, None),
            ("Where it diverges", self.divergence, None),
            (f"Precision {precision.precision} against f32",
             precision.candidates or precision.comparisons, precision.summary())
            if precision is not None else None,
            ("Accuracy", accuracy.rows, accuracy.summary(), accuracy.pictures())
            if accuracy is not None else None,
            ("Serving", self.serving, None),
            ("Benchmark", self.benchmark, None),
        ]
        sections += [Section.of(*entry) for entry in optional if entry and entry[1]]
        if self.notes:
            sections.append(Section("Notes", ("note",), [(note,) for note in self.notes]))
        return sections

    # --- renderings -------------------------------------------------------------------------
    def to_json(self) -> dict:
        data = {
            "schema": SCHEMA,
            "script": self.script,
            "ok": self.ok,
            "versions": self.versions,
            "capture": {"strategy": self.capture_strategy},
            "stages": [stage.to_json() for stage in self.stages],
            "hazards": [hazard.to_json() for hazard in self.sorted_hazards()],
            "unsupported_ops": [op.to_json() for op in self.unsupported_ops],
            "verification": [record.to_json() for record in self.verification],
            "benchmark": [record.to_json() for record in self.benchmark],
        }
        # Optional keys (contract §2, §3): present only when there is something to say.
        if self.handled:
            data["handled"] = [item.to_json() for item in self.handled]
        if self.precision is not None:
            data["precision"] = self.precision.to_json()
        if self.accuracy is not None:
            data["accuracy"] = self.accuracy.to_json()
        if self.divergence:
            data["divergence"] = [entry.to_json() for entry in self.divergence]
        if self.serving:
            data["serving"] = [record.to_json() for record in self.serving]
        if self.notes:
            data["notes"] = list(self.notes)
        return data

    def write(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write report.json and report.md into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, md_path = directory / "report.json", directory / "report.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        md_path.write_text(self.to_markdown())
        return json_path, md_path

    def _headline(self) -> str:
        return (f"Result: {'OK' if self.ok else 'FAILED'}"
                + (f" — captured with {self.capture_strategy} export"
                   if self.capture_strategy else ""))

    def to_markdown(self) -> str:
        lines = [f"# dynexport report: {self.script or 'model'}", "",
                 f"**{self._headline()}**", ""]
        for section in self.sections():
            lines += section.to_markdown()
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        return "\n".join(lines)

    def __rich__(self) -> Group:
        parts: list[Any] = [Text(self._headline(),
                                 style="bold green" if self.ok else "bold red")]
        for section in self.sections():
            parts.append(_rich_hazards(self.sorted_hazards()) if section.title == "Hazards"
                         and self.hazards else section)
        return Group(*parts)

    def _repr_html_(self) -> str:
        status = html.escape(self._headline())
        return (f"<div><h3>dynexport: {status}</h3>"
                + "".join(section._repr_html_() for section in self.sections()) + "</div>")

    def __repr__(self) -> str:
        errors = sum(h.severity == "error" for h in self.hazards)
        return (f"<dynexport Report {self.script or ''}: {'OK' if self.ok else 'FAILED'}, "
                f"{len(self.hazards)} hazards ({errors} errors), "
                f"{len(self.unsupported_ops)} unsupported ops>")

    def __str__(self) -> str:
        return self.to_markdown()


def _rich_hazards(hazards: list[Hazard]) -> Text:
    """Hazards read better in a terminal as a list than as a table with long cells."""
    text = Text(f"Hazards ({len(hazards)})\n", style="bold")
    for h in hazards:
        text.append(f"{h.severity:7} ", style=STYLES[h.severity])
        text.append(f"{h.category}  ", style="bold")
        text.append(where(h.file, h.line, short=True) + "\n", style="cyan")
        if h.code:
            text.append(f"        {h.code}\n", style="dim")
        text.append(f"        {h.message}\n")
        text.append(f"        fix: {h.fix}\n", style="green")
    return text
