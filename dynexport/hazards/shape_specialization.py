"""shape_specialization: a dimension declared dynamic was fixed to its example size."""

from __future__ import annotations

from dynexport.errors import chain_text
from dynexport.hazards.common import SPECIALIZATION_FIX, hazard
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.location import location_from_exception, location_from_stack_trace
from dynexport.hazards.records import Hazard

_MESSAGE = ("A dimension declared dynamic was fixed to its example size by this code; the "
            "converted model only accepts that size.")


def from_capture_errors(evidence: Evidence) -> list[Hazard]:
    """A stricter capture failed with torch's "Constraints violated" (and a more permissive
    one succeeded, or nothing did). Draft export records no failure for it (measured, torch
    2.13), so the capture errors are the only evidence."""
    found = []
    for attempt in evidence.capture.attempts if evidence.capture else []:
        text = chain_text(attempt.error) if attempt.error is not None else ""
        if "Constraints violated" in text:
            where = location_from_stack_trace(text) or location_from_exception(attempt.error)
            found.append(hazard("shape_specialization.from_capture_errors",
                                "shape_specialization", "warning", where, _MESSAGE,
                                SPECIALIZATION_FIX, detail=text[:2000]))
    return found


RULES = (from_capture_errors,)
