"""One rule per hazard category (contract §4): a fact found by a stage → a Hazard with the
user's line, a plain-language message and a concrete fix."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from typing import Any

import numpy as np
import torch

from dynexport.hazards.conversions import Conversion
from dynexport.hazards.location import (
    innermost_user_frame,
    location_from_exception,
    location_from_stack_trace,
)
from dynexport.hazards.records import Hazard, SourceLocation

_BRANCH = re.compile(r"^\s*(if|elif|while|assert)\b|\bif\b.*\belse\b")


# One fix per situation, whichever source (eager watch, draft export, capture error) found it.
_BRANCH_FIX = ("Compute both sides and select with `torch.where`, use `torch.cond` for real "
               "branches, or, when the branch can never be taken (e.g. `len(kept) == 0`), drop "
               "it or state the fact with `torch._check(kept.numel() > 0)`.")
_VALUE_FIX = ("Keep it a tensor (use it in tensor ops, `torch.where`, masks); if it must be a "
              "size, mark it with `torch._check_is_size(n)` and bound it with "
              "`torch._check(n <= MAX)`.")
_SPECIALIZATION_FIX = ("Make the code size-agnostic (no comparison of a dynamic size with a "
                       "constant, no Python int of a shape), or declare the dimension static "
                       "or `Dim.AUTO`.")


def _is_branch(code: str) -> bool:
    return bool(_BRANCH.search(code))


def _hazard(category, severity, location: SourceLocation | None, message: str, fix: str,
            detail: str | None = None) -> Hazard:
    return Hazard(category=category, severity=severity,
                  file=location.file if location else None,
                  line=location.line if location else None,
                  code=location.code if location else None,
                  message=message, fix=fix, detail=detail)


def from_conversion(conversion: Conversion, strict_captured: bool) -> Hazard | None:
    """tensor_to_python, numpy_conversion or data_dependent_branch for one conversion."""
    where, code = conversion.location, conversion.location.code
    if conversion.kind == "numpy":
        severity = "warning" if strict_captured else "error"
        return _hazard(
            "numpy_conversion", severity, where,
            "A tensor is converted to a numpy array inside the model; export cannot follow it "
            "into numpy" + (" (strict capture traced it into tensor ops this time)."
                            if strict_captured else ", so the graph stops here."),
            "Keep the computation in torch (e.g. `.to(torch.uint8)` instead of "
            "`.numpy().astype(np.uint8)`); return the tensor and convert after inference.")
    if conversion.kind == "size" and not _is_branch(code):
        return None  # a data-dependent size used as a value exports as a symbolic size
    if conversion.kind == "size" and not conversion.data_dependent_size:
        return _hazard(
            "tensor_to_python", "warning", where,
            "A branch reads the length of a boolean mask, which is the number of candidates, "
            "not the number selected: it is the same for every input of this shape, so the "
            "branch is decided once at export and the other side is dead code.",
            "Drop the dead branch, or, if the intent was 'nothing selected', state the fact "
            "with `torch._check(mask.any())` or handle it with `torch.where`.")
    if conversion.kind == "bool" or _is_branch(code):
        if not conversion.from_data and not conversion.data_dependent_size:
            return _hazard(
                "tensor_to_python", "warning", where,
                "A branch reads a tensor that does not depend on the inputs (a constant "
                "buffer); export evaluates it once and keeps one side.",
                "Nothing to do if the value never changes; otherwise make it a Python constant "
                "of the module.")
        what = ("the size of a tensor whose length depends on the data (after a mask, "
                "nonzero or unique)" if conversion.data_dependent_size else "a tensor's value")
        return _hazard(
            "data_dependent_branch", "error", where,
            f"Python control flow depends on {what}; export keeps only the branch the example "
            "took, and the converted model gives wrong answers when another input would take "
            "the other one.",
            _BRANCH_FIX)
    if not conversion.from_data:
        return _hazard(
            "tensor_to_python", "warning", where,
            f"`{conversion.kind}` of a tensor that does not depend on the inputs (a constant "
            "buffer or parameter); export folds it to the example's value, which is right as "
            "long as the buffer never changes.",
            "Store the value as a Python number on the module (e.g. in __init__) so that no "
            "tensor is read at export.")
    return _hazard(
        "tensor_to_python", "error", where,
        f"`{conversion.kind}` turns a tensor computed from the inputs into a Python value; "
        "export either bakes the example's value into the graph or leaves an unbacked symbol "
        "that the backends cannot convert.",
        _VALUE_FIX)


def from_draft_failure(failure: Any, filenames: dict[int, str]) -> Hazard | None:
    """A failure torch's draft export recorded (data-dependent guard, constraint violation)."""
    kind = getattr(failure.failure_type, "name", str(failure.failure_type))
    data = failure.data if isinstance(failure.data, dict) else {}
    frames = [(filenames[f["filename"]], f.get("line", 0))
              for f in data.get("user_stack") or data.get("stack") or []
              if f.get("filename") in filenames]
    where = innermost_user_frame(frames)
    detail = f"{kind}: {data.get('expr', '')} (draft export assumed {data.get('result', '?')})"
    if kind == "CONSTRAINT_VIOLATION_ERROR":
        return _hazard("shape_specialization", "warning", where,
                       "A dimension declared dynamic was fixed to its example size.",
                       _SPECIALIZATION_FIX, detail)
    if kind != "DATA_DEPENDENT_ERROR" or where is None:
        return None
    if _is_branch(where.code):
        return _hazard(
            "data_dependent_branch", "error", where,
            "Python control flow depends on tensor data; export assumed the example's outcome "
            f"({data.get('expr', '')} → {data.get('result', '?')}) and dropped the other branch.",
            _BRANCH_FIX, detail)
    return _hazard(
        "tensor_to_python", "error", where,
        "A value computed from tensor data was needed as a Python number; export assumed the "
        f"example's value ({data.get('expr', '')} → {data.get('result', '?')}).",
        _VALUE_FIX, detail)


def from_capture_failure(error: BaseException, strategy: str) -> Hazard | None:
    """Why a stricter capture failed: a dimension declared dynamic that the code pins
    (shape_specialization), or, for strict capture, something dynamo cannot trace
    (graph_break)."""
    text = str(error).strip()
    where = location_from_stack_trace(text) or location_from_exception(error)
    if "Constraints violated" in text:
        return _hazard(
            "shape_specialization", "warning", where,
            "A dimension declared dynamic was fixed to its example size by this code; the "
            "converted model only accepts that size.",
            _SPECIALIZATION_FIX, detail=text[:2000])
    if strategy != "strict" or "data-dependent" in text:
        return None  # data dependence is reported at its cause by the eager watch and draft
    reason = next((line.strip() for line in text.splitlines() if line.strip()),
                  type(error).__name__)
    return _hazard(
        "graph_break", "warning", where,
        f"Strict capture (dynamo) stopped here: {reason[:200]} A more permissive capture "
        "was used instead.",
        "Move the untraceable Python out of the exported method (or behind "
        "`torch.compiler.is_compiling()`), or accept non-strict capture.", detail=text[:2000])


def from_outputs(outputs: list[tuple[str, Any]], model: torch.nn.Module, method: str,
                 strict_captured: bool) -> list[Hazard]:
    """non_tensor_output for every output leaf that is not a tensor."""
    hazards = []
    for name, value in outputs:
        if isinstance(value, torch.Tensor) or value is None:
            continue
        converted = strict_captured and isinstance(value, np.ndarray)
        hazards.append(_hazard(
            "non_tensor_output", "warning" if converted else "error",
            _return_location(model, method),
            f"Output {name!r} is a {type(value).__name__}, not a tensor"
            + ("; strict capture turned it into a tensor output." if converted
               else "; ONNX and OpenVINO models can only return tensors."),
            "Return tensors from the model and convert them (e.g. `.numpy()`, labels to uint8) "
            "after inference, outside the exported method."))
    return hazards


def _return_location(model: torch.nn.Module, method: str) -> SourceLocation | None:
    """The last `return` of the exported method, where its outputs are assembled."""
    function = getattr(type(model), method, None)
    try:
        lines, start = inspect.getsourcelines(function)
        file = inspect.getsourcefile(function)
    except (TypeError, OSError):
        return None
    tree = ast.parse(textwrap.dedent("".join(lines)))
    returns = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Return)]
    line = start + (max(returns) - 1 if returns else 0)
    return SourceLocation(file=file, line=line, code=lines[line - start].strip())
