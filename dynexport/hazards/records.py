"""Records every stage uses to describe what it found in the user's code (contract §3-4)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Category = Literal[
    "data_dependent_branch",
    "tensor_to_python",
    "numpy_conversion",
    "non_tensor_output",
    "unsupported_op",
    "graph_break",
    "shape_specialization",
    "baked_constant",
]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]
Severity = Literal["error", "warning"]
Backend = Literal["onnx", "openvino"]


@dataclass(frozen=True)
class SourceLocation:
    """A line of the user's own code."""

    file: str
    line: int
    code: str


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

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("detail")
        return data

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

    def to_json(self) -> dict:
        return {"op": self.op, "backend": self.backend, "count": self.count,
                "file": self.file, "line": self.line}
