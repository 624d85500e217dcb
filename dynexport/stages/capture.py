"""Capture stage: torch.export's strategies on the script's model (capture.py)."""

from __future__ import annotations

from dynexport.capture import Capture, capture
from dynexport.script import Script
from dynexport.stage import Run, Stage


def _capture(run: Run) -> Capture:
    script = run.result("load", Script)
    dynamic_shapes = None if run.options.static else script.dynamic_shapes
    return capture(script.model, script.example, dynamic_shapes, script.method,
                   no_patch=run.options.no_patch)


CAPTURE_STAGE = Stage("capture", _capture, needs=("load",))
