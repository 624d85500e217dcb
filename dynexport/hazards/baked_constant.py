"""baked_constant: a converted model that matches eager on the example but not on the probe
has a value of the example baked into its graph."""

from __future__ import annotations

import inspect

import torch

from dynexport.hazards.records import Hazard
from dynexport.verify import Verification


def baked_constant_hazards(records: list[Verification], model: torch.nn.Module,
                           method: str = "forward") -> list[Hazard]:
    """One error per runtime that passed on the example and failed on the probe."""
    hazards = []
    for runtime in dict.fromkeys(r.runtime for r in records):
        mine = [r for r in records if r.runtime == runtime]
        example_ok = all(r.passed for r in mine if r.inputs == "example")
        failed = [r for r in mine if r.inputs == "probe" and not r.passed and r.error is None]
        if example_ok and failed:
            file, line, code = _method_location(model, method)
            worst = max(failed, key=lambda r: r.max_abs_diff)
            hazards.append(Hazard(
                category="baked_constant", severity="error", file=file, line=line, code=code,
                message=(f"The {runtime} model matches eager PyTorch on the example input but "
                         f"not on the probe (output {worst.output!r} differs by up to "
                         f"{worst.max_abs_diff:.3g}): a value computed from the example — "
                         "`.item()`, `int(tensor)`, a Python branch on data or a size — was "
                         "frozen into the graph."),
                fix=("Keep the value a tensor (torch.where, masking, torch.cond) instead of "
                     "converting it to Python, or declare the size dynamic "
                     "(`dynamic_shapes`, `torch._check_is_size`)."),
            ))
    return hazards


def _method_location(model: torch.nn.Module, method: str) -> tuple[str | None, int | None,
                                                                       str | None]:
    """Where the exported method is defined: the baked value lives somewhere below it."""
    function = getattr(type(model), method, None)
    try:
        lines, start = inspect.getsourcelines(function)
        return inspect.getsourcefile(function), start, lines[0].strip()
    except (TypeError, OSError):
        return None, None, None
