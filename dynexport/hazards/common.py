"""What several rules share: building a located Hazard, the fix texts (one per situation,
whichever evidence found it), and reading draft export's failures."""

from __future__ import annotations

import inspect
import re
from typing import Any

from dynexport.adapters.torch_export import draft_filenames
from dynexport.hazards.location import innermost_user_frame
from dynexport.hazards.records import Hazard, SourceLocation

_BRANCH = re.compile(r"^\s*(if|elif|while|assert)\b|\bif\b.*\belse\b")

BRANCH_FIX = ("Compute both sides and select with `torch.where`, use `torch.cond` for real "
              "branches, or, when the branch can never be taken (e.g. `len(kept) == 0`), drop "
              "it or state the fact with `torch._check(kept.numel() > 0)`.")
VALUE_FIX = ("Keep it a tensor (use it in tensor ops, `torch.where`, masks); if it must be a "
             "size, mark it with `torch._check_is_size(n)` and bound it with "
             "`torch._check(n <= MAX)`.")
SPECIALIZATION_FIX = ("Make the code size-agnostic (no comparison of a dynamic size with a "
                      "constant, no Python int of a shape), or declare the dimension static "
                      "or `Dim.AUTO`.")


def is_branch(code: str | None) -> bool:
    return bool(code and _BRANCH.search(code))


def hazard(rule: str, category, severity, location: SourceLocation | None, message: str,
           fix: str, detail: str | None = None) -> Hazard:
    return Hazard(category=category, severity=severity,
                  file=location.file if location else None,
                  line=location.line if location else None,
                  code=location.code if location else None,
                  message=message, fix=fix, detail=detail, rule=rule)


def draft_failures(capture: Any) -> list[tuple[str, SourceLocation | None, dict]]:
    """(failure kind, the user's line, torch's data) for each failure draft export recorded."""
    report = capture.draft_report if capture is not None else None
    if report is None:
        return []
    filenames = draft_filenames(report)
    found = []
    for failure in report.failures:
        kind = getattr(failure.failure_type, "name", str(failure.failure_type))
        data = failure.data if isinstance(failure.data, dict) else {}
        frames = [(filenames[f["filename"]], f.get("line", 0))
                  for f in data.get("user_stack") or data.get("stack") or []
                  if f.get("filename") in filenames]
        found.append((kind, innermost_user_frame(frames), data))
    return found


def assumed(data: dict) -> str:
    """What draft export could not decide and what it took, in words."""
    expr, result = data.get("expr", ""), data.get("result", "?")
    return (f"export could not decide `{expr}` (its unbacked symbols, u0, u1, ..., are values "
            f"or sizes computed from tensor data) and took the example's outcome, `{result}`")


def conversion_category(conversion: Any) -> str | None:
    """Which category an eager-watch conversion belongs to (None: no hazard). The decision
    lives here once; each category's module words its own hazards."""
    if conversion.kind == "numpy":
        return "numpy_conversion"
    branch = conversion.kind == "bool" or is_branch(conversion.location.code)
    if conversion.kind == "size" and not branch:
        return None  # a data-dependent size used as a value exports as a symbolic size
    if conversion.kind == "size" and not conversion.data_dependent_size:
        return "tensor_to_python"  # the length of a mask: the same for every input
    if branch and (conversion.from_data or conversion.data_dependent_size):
        return "data_dependent_branch"
    return "tensor_to_python"


def method_location(model: Any, method: str) -> SourceLocation | None:
    """The `def` line of the exported method."""
    function = getattr(type(model), method, None)
    try:
        lines, start = inspect.getsourcelines(function)
        return SourceLocation(inspect.getsourcefile(function), start, lines[0].strip())
    except (TypeError, OSError):
        return None
