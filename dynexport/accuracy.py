"""Accuracy stage: the script's metric on its validation data, for eager PyTorch at f32, each
runtime at f32 and the --precision variant, each against eager f32 (contract §6).

Runs when the script defines `get_validation_data()` and `metric(outputs, targets)`. The
runtimes' flat outputs are put back into the structure eager returns (a dict, a tuple), so the
metric reads every runtime's outputs the way it reads the model's. Each runtime runs in a child
process, like verification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from dynexport import progress
from dynexport.conversion import converted_models
from dynexport.eager import eager_call
from dynexport.inputs import Inputs
from dynexport.isolation import run_isolated
from dynexport.names import BACKENDS
from dynexport.precision import PrecisionResult, variant_ir
from dynexport.runtimes import open_runner, to_numpy
from dynexport.script import Script
from dynexport.stage import Run, Stage, StageFailed


@dataclass
class AccuracyRow:
    runtime: str  # "eager", "onnxruntime", "openvino"
    precision: str  # "f32" or the --precision variant
    value: float  # the primary metric
    delta: float  # against eager f32 (higher is better: negative is a loss)

    COLUMNS = ("runtime", "precision", "value", "delta vs eager f32")

    def to_json(self) -> dict:
        return {"runtime": self.runtime, "precision": self.precision, "value": self.value,
                "delta": self.delta}

    def cells(self) -> tuple[str, ...]:
        return (self.runtime, self.precision, f"{self.value:.3f}", f"{self.delta:+.3f}")


@dataclass
class Accuracy:
    """The primary metric per runtime and precision on the validation data."""

    metric: str
    samples: int
    rows: list[AccuracyRow] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"metric": self.metric, "samples": self.samples,
                "rows": [row.to_json() for row in self.rows]}

    def summary(self) -> str:
        return f"{self.metric} on {self.samples} validation samples (higher is better)."


def _runtime_outputs(runtime: str, artifact: str, device: str, config: dict | None,
                     inputs: list[Inputs], spec: pytree.TreeSpec) -> list[Any]:
    """Each input through the runtime, outputs rebuilt into eager's structure."""
    runner = open_runner(runtime, artifact, device, config)
    outputs = []
    for index, values in enumerate(inputs):
        progress.step(f"{runtime} on validation sample {index + 1}/{len(inputs)}")
        flat = [torch.from_numpy(np.asarray(a)) for a in runner.run(to_numpy(values.tensors()))]
        outputs.append(pytree.tree_unflatten(flat, spec))
    return outputs


def measure(script: Script, runtimes: list[tuple[str, str, str, dict | None]], device: str,
            isolate: bool = True, static: bool = False) -> Accuracy:
    """`runtimes`: (runtime, precision, artifact, compile config) to evaluate beside eager.
    `static`: the models take the example's sizes only (--static)."""
    data = script.validation()
    inputs, targets = [pair[0] for pair in data], [pair[1] for pair in data]
    sizes = [tuple(t.shape) for t in script.example.tensors()]
    other = [i for i, values in enumerate(inputs)
             if [tuple(t.shape) for t in values.tensors()] != sizes]
    if static and other:
        raise StageFailed(
            f"--static fixes the models' input sizes to the example's, and {len(other)} of "
            f"{len(inputs)} validation samples have other sizes (sample {other[0] + 1}: "
            f"{[tuple(t.shape) for t in inputs[other[0]].tensors()]} against {sizes}). Pad "
            "them to the example's sizes in get_validation_data(), or measure accuracy "
            "without --static.")
    call, eager = eager_call(script.model, script.method), []
    with torch.no_grad():
        for index, values in enumerate(inputs):
            progress.step(f"eager on validation sample {index + 1}/{len(inputs)}")
            eager.append(call(values))
    reference = script.metric(eager, targets)
    name = next(iter(reference))
    accuracy = Accuracy(name, len(data), [AccuracyRow("eager", "f32", reference[name], 0.0)])
    spec = pytree.tree_flatten(eager[0])[1]
    for runtime, precision, artifact, config in runtimes:
        outputs = run_isolated(
            lambda r=runtime, a=artifact, c=config: _runtime_outputs(r, a, device, c, inputs,
                                                                     spec),
            f"{runtime} on the validation data", isolate)
        value = script.metric(outputs, targets)[name]
        accuracy.rows.append(AccuracyRow(runtime, precision, value, value - reference[name]))
    return accuracy


def _run(run: Run) -> Accuracy:
    script = run.result("load", Script)
    runtimes = [(runtime, "f32", artifact, None) for runtime, artifact in converted_models(run)]
    variant = run.result("precision", PrecisionResult)
    if variant is not None and not variant.candidates:
        runtimes.append(("openvino", variant.precision, variant_ir(run, variant),
                         variant.openvino_config))
    accuracy = measure(script, runtimes, run.options.device, run.options.isolate,
                       run.options.static)
    if variant is not None:  # --precision auto measured each candidate already
        accuracy.rows += [AccuracyRow("openvino", c.precision, c.value, c.delta)
                          for c in variant.candidates if c.value is not None]
    return accuracy


def _requested(run: Run) -> str | None:
    script = run.result("load", Script)
    if script is None or script.validation is None or script.metric is None:
        return ""  # no validation data or metric: nothing to measure
    return "--no-verify" if not run.options.verify else run.options.device_missing


ACCURACY_STAGE = Stage("accuracy", _run, needs=("eager",), needs_any=BACKENDS,
                       requested=_requested)
