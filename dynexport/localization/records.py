"""What localisation found: per diverging (runtime, precision, inputs), the cause, the ops
responsible at the user's lines, and a fix (report.json `divergence`, contract §7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dynexport.compare import json_number
from dynexport.hazards.records import SourceLocation
from dynexport.names import Cause, Translation
from dynexport.section import Section


@dataclass
class Culprit:
    """One op responsible for a divergence, at the user's line where it was called."""

    op: str  # e.g. "aten.mm.default"
    node: str  # the FX node
    location: SourceLocation | None
    max_abs_diff: float  # of this op's output
    max_rel_diff: float
    input_max_abs_diff: float  # the largest of its inputs'
    translation: Translation | None = None
    translated_by: str | None = None  # a custom op's translation function, "module.function"
    # reduced precision: the lines computing its inputs (their rounding reaches it too)
    input_lines: list[str] = field(default_factory=list)
    # an integer result of floating-point inputs (a cast, a floor): a difference within the
    # inputs' tolerance may still carry a value across an integer boundary
    from_floats: bool = False
    # computed in 32 bits where torch's int64 values need more (values.NodeDiff)
    narrowed_to_int32: bool = False

    def to_json(self) -> dict:
        where = self.location
        return {"op": self.op, "node": self.node, "translated_by": self.translated_by,
                "file": where.file if where else None, "line": where.line if where else None,
                "code": where.code if where else None,
                "max_abs_diff": json_number(self.max_abs_diff),
                "max_rel_diff": json_number(self.max_rel_diff),
                "input_max_abs_diff": json_number(self.input_max_abs_diff),
                "translation": self.translation}

    @property
    def where(self) -> str:
        return f"{self.location.file}:{self.location.line}" if self.location else "?"


@dataclass
class Divergence:
    """One (runtime, precision, inputs) whose outputs left tolerance, localised. `measured`
    says what was compared (and, where the evidence does not decide, what it rules out)."""

    runtime: str
    precision: str
    inputs: str  # "example", "probe", "validation[0]", ...
    cause: Cause
    culprits: list[Culprit]
    fix: str
    seconds: float = 0.0
    measured: str = ""
    compared: int = 0  # FX nodes compared with the reference
    nodes: int = 0  # of the program's

    COLUMNS = ("runtime", "precision", "inputs", "cause", "culprit", "at", "error (op / inputs)",
               "fix")
    DETAIL_LABEL = "every culprit, and what was measured"

    def to_json(self) -> dict:
        return {"runtime": self.runtime, "precision": self.precision, "inputs": self.inputs,
                "cause": self.cause, "culprits": [c.to_json() for c in self.culprits],
                "fix": self.fix, "seconds": round(self.seconds, 3), "measured": self.measured,
                "compared": self.compared, "nodes": self.nodes}

    def cells(self) -> tuple[str, ...]:
        first = self.culprits[0] if self.culprits else None
        return (self.runtime, self.precision, self.inputs, self.cause,
                first.op if first else "(not found)",
                first.where if first else "",
                f"{first.max_abs_diff:.3g} / {first.input_max_abs_diff:.3g}" if first else "",
                self.fix)

    @property
    def detail(self) -> str | None:
        """The full list and what was measured, under the row in markdown and HTML."""
        lines = [f"{c.where} `{c.location.code if c.location else ''}` {c.op} ({c.node}): "
                 f"max abs {c.max_abs_diff:.3g} on inputs off by {c.input_max_abs_diff:.3g}"
                 for c in self.culprits]
        return "\n".join(lines + ([self.measured] if self.measured else [])) or None


@dataclass
class Localization:
    """dynexport.localize()'s answer: the entries, a table in a terminal and in Jupyter."""

    entries: list[Divergence] = field(default_factory=list)

    def section(self) -> Section:
        return Section.of("Where it diverges", self.entries,
                          None if self.entries else "no divergence")

    def __rich__(self):
        return self.section().__rich__()

    def _repr_html_(self) -> str:
        return self.section()._repr_html_()

    def to_json(self) -> list[dict]:
        return [entry.to_json() for entry in self.entries]
