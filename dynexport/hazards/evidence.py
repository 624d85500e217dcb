"""What the stages leave for the hazard step: one record, filled as far as the run got."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dynexport.capture import Capture
from dynexport.hazards.conversions import Conversion
from dynexport.hazards.records import Hazard, SourceLocation, UnsupportedOp
from dynexport.inputs import Inputs
from dynexport.localization.records import Divergence
from dynexport.verify import Verification


@dataclass
class Evidence:
    """Facts about one model, each from the stage that found it."""

    model: torch.nn.Module | None = None
    method: str = "forward"
    known: list[Hazard] = field(default_factory=list)  # found while loading (integrations)
    conversions: list[Conversion] = field(default_factory=list)  # eager watch, all inputs
    outputs: list[tuple[str, Any]] = field(default_factory=list)  # eager outputs, all inputs
    capture: Capture | None = None
    unsupported_ops: list[UnsupportedOp] = field(default_factory=list)
    verification: list[Verification] = field(default_factory=list)
    # where a converted model left the program's values, and why (the localize stage)
    divergence: list[Divergence] = field(default_factory=list)
    example: Inputs | None = None
    # ops dynexport's decompositions replaced, at the user's lines
    replaced: list[tuple[str, SourceLocation | None]] = field(default_factory=list)
    # what a stage could only judge partly (e.g. coverage on the program as given), for people
    notes: list[str] = field(default_factory=list)
    # backend → program inputs its converter dropped as unused and dynexport kept
    unused_inputs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def strict_captured(self) -> bool:
        return self.capture is not None and self.capture.strategy == "strict"
