"""baked_constant: a converted model that matches eager on the example but not on the probe
has a value of the example baked into its graph, unless localisation found where the converted
model left the program's own values on the probe (then the divergence entry speaks)."""

from __future__ import annotations

from dynexport.hazards.common import hazard, method_location
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.records import Hazard


def from_verification(evidence: Evidence) -> list[Hazard]:
    """One error per runtime that passed on the example and failed on the probe by value
    (not by a runtime error or a shape mismatch, which say something else)."""
    records = evidence.verification
    found = []
    for runtime in dict.fromkeys(r.runtime for r in records):
        mine = [r for r in records if r.runtime == runtime]
        example_ok = all(r.passed for r in mine if r.inputs == "example")
        # a runtime that disagreed with itself raced: that is no value frozen into the graph
        failed = [r for r in mine if r.inputs == "probe" and not r.passed and r.error is None
                  and not r.self_disagreement]
        localised = any(d.runtime == runtime and d.inputs == "probe" and d.precision == "f32"
                        for d in evidence.divergence)
        if example_ok and failed and not localised:
            worst = max(failed, key=lambda r: r.max_abs_diff)
            found.append(hazard(
                "baked_constant.from_verification", "baked_constant", "error",
                method_location(evidence.model, evidence.method),
                f"The {runtime} model matches eager PyTorch on the example input but not on the "
                f"probe (output {worst.output!r} differs by up to {worst.max_abs_diff:.3g}): a "
                "value computed from the example — `.item()`, `int(tensor)`, a Python branch on "
                "data or a size — was frozen into the graph.",
                "Keep the value a tensor (torch.where, masking, torch.cond) instead of "
                "converting it to Python, or declare the size dynamic (`dynamic_shapes`, "
                "`torch._check_is_size`)."))
    return found


RULES = (from_verification,)
