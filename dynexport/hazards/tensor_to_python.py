"""tensor_to_python: a tensor turned into a Python value (`.item()`, `int(t)`, ...)."""

from __future__ import annotations

import torch

from dynexport.hazards.common import (
    VALUE_FIX,
    assumed,
    conversion_category,
    draft_failures,
    hazard,
    is_branch,
)
from dynexport.hazards.conversions import Conversion
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.location import location_from_stack_trace
from dynexport.hazards.records import Hazard

_RULE = "tensor_to_python.from_watch"
_SCALAR_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)


def from_watch(evidence: Evidence) -> list[Hazard]:
    """Conversions the eager watch saw: an error for data, a warning for constants, for a
    branch on the length of a mask (which is the same for every input) and for a value that
    feeds no output of the captured graph."""
    checks_only = _lines_feeding_no_output(evidence)
    return [_checked_only(c) if (c.location.file, c.location.line) in checks_only
            else _watched(c)
            for c in evidence.conversions if conversion_category(c) == "tensor_to_python"]


def _lines_feeding_no_output(evidence: Evidence) -> set[tuple[str, int]]:
    """Lines whose `.item()` strict or non-strict capture traced into the program and whose
    value reaches no output: it feeds only the checks of torch._check (torch's export example
    `constrain_as_value_example`), so no computation depends on the example's value."""
    capture = evidence.capture
    if capture is None or capture.program is None or capture.strategy == "draft":
        return set()
    found = set()
    for node in capture.program.graph.nodes:
        if node.op == "call_function" and node.target in _SCALAR_READS \
                and not _reaches_output(node):
            where = location_from_stack_trace(node.meta.get("stack_trace"))
            if where is not None:
                found.add((where.file, where.line))
    return found


def _reaches_output(node: torch.fx.Node) -> bool:
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current.op == "output":
            return True
        for user in current.users:
            if user not in seen:
                seen.add(user)
                stack.append(user)
    return False


def _checked_only(c: Conversion) -> Hazard:
    return hazard(
        _RULE, "tensor_to_python", "warning", c.location,
        f"`{c.kind}` of a tensor computed from the inputs feeds no output: capture kept it "
        "only for what torch._check states about it, which exported.pt2 asserts and "
        "model.onnx and model.xml do not check.",
        "Nothing to do for inputs within the stated bounds; to have every runtime check them, "
        "compute the check as a tensor output (e.g. a bool `valid` output).")


def _watched(c: Conversion) -> Hazard:
    branch = c.kind == "bool" or is_branch(c.location.code)
    if c.kind == "size":
        return hazard(
            _RULE, "tensor_to_python", "warning", c.location,
            "A branch reads the length of a boolean mask, which is the number of candidates, "
            "not the number selected: it is the same for every input of this shape, so the "
            "branch is decided once at export and the other side is dead code.",
            "Drop the dead branch, or, if the intent was 'nothing selected', state the fact "
            "with `torch._check(mask.any())` or handle it with `torch.where`.")
    if branch:
        return hazard(
            _RULE, "tensor_to_python", "warning", c.location,
            "A branch reads a tensor that does not depend on the inputs (a constant buffer); "
            "export evaluates it once and keeps one side.",
            "Nothing to do if the value never changes; otherwise make it a Python constant of "
            "the module.")
    if not c.from_data:
        return hazard(
            _RULE, "tensor_to_python", "warning", c.location,
            f"`{c.kind}` of a tensor that does not depend on the inputs (a constant buffer or "
            "parameter); export folds it to the example's value, which is right as long as the "
            "buffer never changes.",
            "Store the value as a Python number on the module (e.g. in __init__) so that no "
            "tensor is read at export.")
    return hazard(
        _RULE, "tensor_to_python", "error", c.location,
        f"`{c.kind}` turns a tensor computed from the inputs into a Python value; export either "
        "bakes the example's value into the graph or leaves an unbacked symbol that the "
        "backends cannot convert.", VALUE_FIX)


def from_draft(evidence: Evidence) -> list[Hazard]:
    """A data-dependent guard draft export recorded where the user's code needs a value of
    data as a Python number without converting a tensor itself (e.g. `x[mask].view(n, -1)`
    needs the number selected): the eager watch sees no conversion there. Where the watch saw
    the line, its verdict (data or constant) stands."""
    watched = {(c.location.file, c.location.line) for c in evidence.conversions}
    return [hazard(
        "tensor_to_python.from_draft", "tensor_to_python", "error", where,
        f"A value computed from tensor data was needed as a Python number: {assumed(data)}.",
        VALUE_FIX, detail=f"{kind}: {data.get('expr', '')}")
        for kind, where, data in draft_failures(evidence.capture)
        if kind == "DATA_DEPENDENT_ERROR" and where is not None and not is_branch(where.code)
        and (where.file, where.line) not in watched]


RULES = (from_watch, from_draft)
