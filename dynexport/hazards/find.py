"""The hazard step: every rule of every category (contract §4) on the evidence the stages
left, merged to one hazard per line and category. Where is the rule for category X? In
dynexport/hazards/X.py; its RULES are listed here."""

from __future__ import annotations

from collections.abc import Callable

from dynexport.hazards import (
    baked_constant,
    data_dependent_branch,
    graph_break,
    non_tensor_output,
    numpy_conversion,
    shape_specialization,
    tensor_to_python,
    unsupported_op,
)
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.records import Hazard

Rule = Callable[[Evidence], list[Hazard]]

RULES: tuple[Rule, ...] = (
    *data_dependent_branch.RULES,
    *tensor_to_python.RULES,
    *numpy_conversion.RULES,
    *non_tensor_output.RULES,
    *unsupported_op.RULES,
    *graph_break.RULES,
    *shape_specialization.RULES,
    *baked_constant.RULES,
)

# On one line, the more specific category explains the others away: `if x.item() > 0` is a
# data-dependent branch, `t.cpu().numpy()` a numpy conversion.
_SUBSUMES = {
    "data_dependent_branch": {"tensor_to_python", "graph_break"},
    "numpy_conversion": {"tensor_to_python", "graph_break"},
    "tensor_to_python": {"graph_break"},
}


def find_hazards(evidence: Evidence, rules: tuple[Rule, ...] = RULES) -> list[Hazard]:
    """Every hazard the evidence shows, deduplicated and ordered."""
    found = list(evidence.known)
    for rule in rules:
        found += rule(evidence)
    return merge(found)


def merge(hazards: list[Hazard]) -> list[Hazard]:
    """One hazard per (line, category), the most specific category per line, stable order."""
    by_key: dict[tuple, Hazard] = {}
    for hazard in hazards:
        key = (hazard.file, hazard.line, hazard.category)
        if key not in by_key or (hazard.severity == "error" and by_key[key].severity != "error"):
            by_key[key] = hazard
    lines: dict[tuple, set[str]] = {}
    for file, line, category in by_key:
        lines.setdefault((file, line), set()).add(category)
    located = {category for file, _, category in by_key if file is not None}
    kept = [h for (file, line, category), h in by_key.items()
            if (file is None and category not in located)
            or (file is not None and not any(category in _SUBSUMES.get(other, ())
                                             for other in lines[(file, line)]))]
    return sorted(kept, key=lambda h: h.sort_key)
