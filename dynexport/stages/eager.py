"""Eager stage: the user's model on the example and the probe (eager.py runs it, watched)."""

from __future__ import annotations

from dataclasses import replace

from dynexport.eager import EagerRun, run_eager
from dynexport.inputs import Inputs, make_probe
from dynexport.names import InputKind
from dynexport.script import Script
from dynexport.stage import Run, Stage


def _inputs(run: Run) -> dict[InputKind, Inputs]:
    """The example and the probe of this run. Under --static a probe of other sizes cannot run
    on the fixed-size models: a generated probe of the example's sizes replaces it."""
    script = run.result("load", Script)
    probe = script.probe
    if run.options.static and [t.shape for t in probe.tensors()] != [
            t.shape for t in script.example.tensors()]:
        probe = make_probe(script.example)
    return {"example": script.example, "probe": probe}


def _run_eager(run: Run) -> EagerRun:
    """Eager on both inputs; with --no-verify on the example alone, since only verification
    compares with eager's outputs on the probe (a large model's frame is seconds of CPU)."""
    script = run.result("load", Script)
    inputs = _inputs(run)
    run_on = inputs if run.options.verify else {"example": inputs["example"]}
    return replace(run_eager(script.model, run_on, script.method), inputs=inputs)


EAGER_STAGE = Stage("eager", _run_eager, needs=("load",))
