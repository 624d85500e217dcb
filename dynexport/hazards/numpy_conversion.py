"""numpy_conversion: a tensor becomes a numpy array inside the exported method."""

from __future__ import annotations

from dynexport.hazards.common import conversion_category, hazard
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.records import Hazard


def from_watch(evidence: Evidence) -> list[Hazard]:
    """`.numpy()` / `np.asarray(t)` seen by the eager watch: an error, a warning where strict
    capture traced it into tensor ops."""
    strict = evidence.strict_captured
    return [hazard(
        "numpy_conversion.from_watch", "numpy_conversion", "warning" if strict else "error",
        c.location,
        "A tensor is converted to a numpy array inside the model; export cannot follow it "
        "into numpy" + (" (strict capture traced it into tensor ops this time)." if strict
                        else ", so the graph stops here."),
        "Keep the computation in torch (e.g. `.to(torch.uint8)` instead of "
        "`.numpy().astype(np.uint8)`); return the tensor and convert after inference.")
        for c in evidence.conversions if conversion_category(c) == "numpy_conversion"]


RULES = (from_watch,)
