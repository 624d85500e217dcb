"""Every hazard of a model in one pass: an eager run watched for tensor → Python conversions,
the failures draft export recorded, why strict capture failed, and the outputs' types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch._logging import structured

from dynexport.capture import Capture
from dynexport.hazards import rules
from dynexport.hazards.conversions import watch_conversions
from dynexport.hazards.records import Hazard
from dynexport.inputs import Inputs, flatten_outputs

# On one line, the more specific category explains the others away: `if x.item() > 0` is a
# data-dependent branch, `t.cpu().numpy()` a numpy conversion.
_SUBSUMES = {
    "data_dependent_branch": {"tensor_to_python", "graph_break"},
    "numpy_conversion": {"tensor_to_python", "graph_break"},
    "tensor_to_python": {"graph_break"},
}


def find_hazards(eager: Callable[[Inputs], Any], inputs: list[Inputs], captured: Capture,
                 model: Any, method: str = "forward") -> list[Hazard]:
    """All hazards found for `model` on every one of `inputs`, deduplicated and ordered."""
    strict = captured.strategy == "strict"
    found: list[Hazard] = []
    outputs: list[tuple[str, Any]] = []
    for values in inputs:
        try:
            conversions = watch_conversions(lambda v=values: outputs.extend(
                flatten_outputs(eager(v))), values.tensors())
        except Exception:  # an eager failure is the capture stage's to report
            continue
        found += filter(None, (rules.from_conversion(c, strict) for c in conversions))
    report = captured.draft_report
    if report is not None:
        # The eager watch knows whether a converted tensor came from the inputs; draft export
        # only knows it could not guard, so its verdict yields where the watch saw the line.
        watched = {(h.file, h.line) for h in found}
        filenames = draft_filenames(report)
        found += [h for h in (rules.from_draft_failure(f, filenames) for f in report.failures)
                  if h is not None and not (h.category == "tensor_to_python"
                                            and (h.file, h.line) in watched)]
    if captured.program is not None:
        found += filter(None, (rules.from_capture_failure(a.error, a.strategy)
                               for a in captured.attempts if a.error is not None))
    found += rules.from_outputs(outputs, model, method, strict)
    return merge(found)


def draft_filenames(report: Any) -> dict[int, str]:
    """File names by intern index for a draft report's frames. The report only holds the
    names first interned during its own export; torch's process-wide intern table has those
    of earlier exports (a second export in one process)."""
    filenames = {index: name for name, index in structured.INTERN_TABLE.items()}
    filenames.update(report.str_to_filename)
    return filenames


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
