"""data_dependent_branch: Python control flow decided by tensor data."""

from __future__ import annotations

from dynexport.hazards.common import (
    BRANCH_FIX,
    assumed,
    conversion_category,
    draft_failures,
    hazard,
    is_branch,
)
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.records import Hazard


def from_watch(evidence: Evidence) -> list[Hazard]:
    """A branch on a value computed from the inputs, or on the length of a tensor whose length
    depends on the data, seen by the eager watch."""
    # Strict and non-strict export fail on a branch on data; when one of them succeeded, export
    # never evaluated the branch (it sits behind torch.compiler.is_exporting(), as in
    # transformers' masking code): eager takes it, the converted model runs what export traced.
    capture = evidence.capture
    traced_without_guessing = capture is not None and capture.strategy in ("strict",
                                                                           "non_strict")
    found = []
    for c in evidence.conversions:
        if conversion_category(c) != "data_dependent_branch":
            continue
        what = ("the size of a tensor whose length depends on the data (after a mask, "
                "nonzero or unique)" if c.data_dependent_size else "a tensor's value")
        if traced_without_guessing:
            found.append(hazard(
                "data_dependent_branch.from_watch", "data_dependent_branch", "warning",
                c.location,
                f"Python control flow depends on {what} in eager, but export did not evaluate "
                f"this branch ({capture.strategy} capture succeeded, so it is skipped while "
                "exporting, e.g. behind `torch.compiler.is_exporting()`): the converted model "
                "runs the path export traced; verification compares it with eager on both "
                "inputs.",
                "Nothing to change if the branch is meant for eager only; otherwise compute "
                "both sides and select with `torch.where`."))
            continue
        found.append(hazard(
            "data_dependent_branch.from_watch", "data_dependent_branch", "error", c.location,
            f"Python control flow depends on {what}; export keeps only the branch the example "
            "took, and the converted model gives wrong answers when another input would take "
            "the other one.", BRANCH_FIX))
    return found


def from_draft(evidence: Evidence) -> list[Hazard]:
    """A data-dependent guard draft export recorded at a branch of the user's code (a branch
    inside code the eager watch cannot see converting, e.g. on a size torch computes)."""
    return [hazard(
        "data_dependent_branch.from_draft", "data_dependent_branch", "error", where,
        f"Python control flow depends on tensor data: {assumed(data)}, and dropped the other "
        "branch.", BRANCH_FIX, detail=f"{kind}: {data.get('expr', '')}")
        for kind, where, data in draft_failures(evidence.capture)
        if kind == "DATA_DEPENDENT_ERROR" and where is not None and is_branch(where.code)]


RULES = (from_watch, from_draft)
