"""tensor_to_python: a tensor turned into a Python value (`.item()`, `int(t)`, ...)."""

from __future__ import annotations

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
from dynexport.hazards.records import Hazard

_RULE = "tensor_to_python.from_watch"


def from_watch(evidence: Evidence) -> list[Hazard]:
    """Conversions the eager watch saw: an error for data, a warning for constants and for a
    branch on the length of a mask (which is the same for every input)."""
    return [_watched(c) for c in evidence.conversions
            if conversion_category(c) == "tensor_to_python"]


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
