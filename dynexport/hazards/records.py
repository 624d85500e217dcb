"""Records every stage uses to describe what it found in the user's code (contract §3-4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dynexport.names import Backend, Category, Severity


@dataclass(frozen=True)
class SourceLocation:
    """A line of the user's own code."""

    file: str
    line: int
    code: str


def where(file: str | None, line: int | None, short: bool = False) -> str:
    """`file:line` (the file's name alone when `short`), or '' without a file."""
    if not file:
        return ""
    name = Path(file).name if short else file
    return f"{name}:{line}" if line else name


@dataclass
class Hazard:
    """One problem in the user's model, located at the line that causes it."""

    category: Category
    severity: Severity
    file: str | None
    line: int | None
    code: str | None
    message: str
    fix: str
    detail: str | None = None  # the raw torch/backend message, folded away in renderings
    rule: str | None = None  # which rule found it ("module.function"); not in report.json

    COLUMNS = ("severity", "category", "location", "code", "message", "fix")

    def to_json(self) -> dict:
        return {"category": self.category, "severity": self.severity, "file": self.file,
                "line": self.line, "code": self.code, "message": self.message, "fix": self.fix}

    def cells(self) -> tuple[str, ...]:
        return (self.severity, self.category, where(self.file, self.line, short=True),
                self.code or "", self.message, self.fix)

    @property
    def sort_key(self) -> tuple:
        return (self.file or "~", self.line or 0, self.category, self.message)


@dataclass
class UnsupportedOp:
    """An operator of the captured program that a backend cannot lower."""

    op: str  # "namespace.name.overload", e.g. "aten.linalg_inv_ex.default"
    backend: Backend
    count: int
    file: str | None = None
    line: int | None = None
    code: str | None = None

    COLUMNS = ("op", "backend", "count", "location")

    def to_json(self) -> dict:
        return {"op": self.op, "backend": self.backend, "count": self.count,
                "file": self.file, "line": self.line}

    def cells(self) -> tuple[str, ...]:
        return (self.op, self.backend, str(self.count), where(self.file, self.line, short=True))


@dataclass
class Handled:
    """Something that would have broken export and that dynexport fixed by itself."""

    what: str
    file: str | None = None
    line: int | None = None
    code: str | None = None
    # an op dynexport decomposed, translated, supplied from its kit or patched in a library
    # so that a backend converts it (what a raw route lacks), not a fact about the run
    op_rewrite: bool = False

    COLUMNS = ("what dynexport handled", "location", "code")

    def to_json(self) -> dict:
        data = {"what": self.what, "file": self.file, "line": self.line, "code": self.code}
        return data | {"op_rewrite": True} if self.op_rewrite else data

    def cells(self) -> tuple[str, ...]:
        return (self.what, where(self.file, self.line, short=True), self.code or "")
