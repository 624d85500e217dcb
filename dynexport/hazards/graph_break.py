"""graph_break: something dynamo cannot trace in strict capture."""

from __future__ import annotations

from dynexport.errors import chain_text
from dynexport.hazards.common import hazard
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.location import location_from_exception, location_from_stack_trace
from dynexport.hazards.records import Hazard


def from_strict_error(evidence: Evidence) -> list[Hazard]:
    """Strict capture failed for a reason other than data dependence or a constraint (those
    are reported at their cause by their own rules) and a later strategy succeeded."""
    capture = evidence.capture
    if capture is None or capture.program is None:
        return []
    found = []
    for attempt in capture.attempts:
        text = chain_text(attempt.error).strip() if attempt.error is not None else ""
        if (attempt.strategy != "strict" or not text or "data-dependent" in text
                or "Constraints violated" in text):
            continue
        reason = next(line.strip() for line in text.splitlines() if line.strip())
        where = location_from_stack_trace(text) or location_from_exception(attempt.error)
        found.append(hazard(
            "graph_break.from_strict_error", "graph_break", "warning", where,
            f"Strict capture (dynamo) stopped here: {reason[:200]} A more permissive capture "
            "was used instead.",
            "Move the untraceable Python out of the exported method (or behind "
            "`torch.compiler.is_compiling()`), or accept non-strict capture.",
            detail=text[:2000]))
    return found


RULES = (from_strict_error,)
