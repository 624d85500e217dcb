"""Measuring a script's metric and label agreement on its validation data, for eager PyTorch
and for converted models, apart from any stage: the accuracy stage and `--precision auto` both
measure through it (and neither imports the other).

The runtimes' flat outputs are put back into the structure eager returns (a dict, a tuple), so
the metric reads every runtime's outputs the way it reads the model's. Each runtime runs in a
child process, like verification. With the script's `picture(output, target)`, each row's
output for the first validation sample is drawn to pictures/<runtime>-<precision>.png in the
output folder (the row's `picture`); a picture that fails does not stop the measurement."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from dynexport import progress
from dynexport.compare import LabelCount, percent
from dynexport.inputs import Inputs, Signature, eager_call, flatten_outputs
from dynexport.isolation import ISOLATED, Isolation, run_isolated
from dynexport.runtimes import open_runner, to_numpy
from dynexport.script import Script, ScriptError
from dynexport.stage import Run, StageFailed


@dataclass
class AccuracyRow:
    runtime: str  # "eager", "onnxruntime", "openvino"
    precision: str  # "f32" or the --precision variant
    value: float  # the primary metric
    delta: float  # against eager f32 (higher is better: negative is a loss)
    picture: str | None = None  # the first sample drawn by the script, relative to the out dir
    # integer outputs (labels): the share of elements equal to eager f32's, over every sample
    label_agreement: dict[str, float] = field(default_factory=dict)

    COLUMNS = ("runtime", "precision", "value", "delta vs eager f32", "labels agree")

    def to_json(self) -> dict:
        data = {"runtime": self.runtime, "precision": self.precision, "value": self.value,
                "delta": self.delta}
        if self.picture is not None:
            data["picture"] = self.picture
        if self.label_agreement:
            data["label_agreement"] = self.label_agreement
        return data

    def cells(self) -> tuple[str, ...]:
        agreement = ", ".join(f"{name} {percent(share)}"
                              for name, share in self.label_agreement.items())
        return (self.runtime, self.precision, f"{self.value:.3f}", f"{self.delta:+.3f}",
                agreement)


@dataclass
class Accuracy:
    """The primary metric per runtime and precision on the validation data."""

    metric: str
    samples: int
    rows: list[AccuracyRow] = field(default_factory=list)
    # Why the script's picture failed (the stage then fails with it); not in report.json
    picture_error: str | None = None

    def to_json(self) -> dict:
        return {"metric": self.metric, "samples": self.samples,
                "rows": [row.to_json() for row in self.rows]}

    def summary(self) -> str:
        return f"{self.metric} on {self.samples} validation samples (higher is better)."

    def pictures(self) -> list[tuple[str, str]]:
        """(caption, path relative to the output folder) of each row drawn."""
        return [(f"{row.runtime} {row.precision}", row.picture) for row in self.rows
                if row.picture is not None]


PICTURES = "pictures"  # the folder of the rows' pictures, in the output folder


def picture_path(runtime: str, precision: str) -> str:
    """Where the picture of a row goes, relative to the output folder."""
    return f"{PICTURES}/{runtime}-{precision}.png"


class _Painter:
    """Draws the first validation sample of each row with the script's picture into
    `out_dir`/pictures/; after the first failure it draws nothing more and keeps the reason."""

    def __init__(self, script: Script, out_dir: Path | None, target: Any):
        self.picture = script.picture if out_dir is not None else None
        self.out_dir, self.target = out_dir, target
        self.error: str | None = None
        self.drawn = 0

    def draw(self, runtime: str, precision: str, output: Any) -> str | None:
        """The row's picture path (relative to the output folder), None when not drawn."""
        if self.picture is None or self.error is not None:
            return None
        relative = picture_path(runtime, precision)
        path = self.out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a picture of an earlier run must not pass for this one
        progress.step(f"picture of {runtime} {precision}")
        try:
            image = self.picture(output, self.target)
        except ScriptError as exc:
            drawn = (f"the {self.drawn} drawn before it are in {path.parent}" if self.drawn
                     else "none was drawn")
            self.error = (f"{exc} (Drawing {runtime} {precision}; {drawn}. The metric was "
                          "still measured for every row.)")
            return None
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(image)).save(path)
        self.drawn += 1
        return relative


def _runtime_outputs(runtime: str, artifact: str, device: str, config: dict | None,
                     inputs: list[Inputs], spec: pytree.TreeSpec,
                     signature: Signature | None) -> list[Any]:
    """Each input through the runtime, outputs rebuilt into eager's structure."""
    runner = open_runner(runtime, artifact, device, config, signature)
    outputs = []
    for index, values in enumerate(inputs):
        progress.step(f"{runtime} on validation sample {index + 1}/{len(inputs)}")
        flat = [torch.from_numpy(np.asarray(a)) for a in runner.run(to_numpy(values.tensors()))]
        outputs.append(pytree.tree_unflatten(flat, spec))
    return outputs


def measure(script: Script, eager: list[Any],
            runtimes: list[tuple[str, str, str, dict | None]], device: str,
            isolation: Isolation = ISOLATED, static: bool = False,
            pictures: Path | None = None, signature: Signature | None = None) -> Accuracy:
    """`eager`: the model's outputs on the validation samples (eager_on_validation), the
    reference. `runtimes`: (runtime, precision, artifact, compile config) to evaluate beside
    eager, each fed and read by `signature`'s names.
    `static`: the models take the example's sizes only (--static). `pictures`: the output
    folder; with the script's `picture`, each row's first sample is drawn into its pictures/
    (a failure is kept in `picture_error`, for the caller to judge)."""
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
    reference = script.metric(eager, targets)
    name = next(iter(reference))
    painter = _Painter(script, pictures, targets[0])
    accuracy = Accuracy(name, len(data), [AccuracyRow("eager", "f32", reference[name], 0.0,
                                                      painter.draw("eager", "f32", eager[0]))])
    spec = pytree.tree_flatten(eager[0])[1]
    for runtime, precision, artifact, config in runtimes:
        outputs = run_isolated(
            lambda r=runtime, a=artifact, c=config: _runtime_outputs(r, a, device, c, inputs,
                                                                     spec, signature),
            f"{runtime} on the validation data", isolation)
        value = script.metric(outputs, targets)[name]
        accuracy.rows.append(AccuracyRow(runtime, precision, value, value - reference[name],
                                         painter.draw(runtime, precision, outputs[0]),
                                         label_agreement(eager, outputs,
                                                         script.labelled_outputs())))
    accuracy.picture_error = painter.error
    return accuracy


def eager_on_validation(run: Run, script: Script) -> list[Any]:
    """The model's outputs on each validation sample, made once per run: --precision auto
    measures each candidate, and the accuracy stage the f32 models, against the same reference
    (a large model's frame is seconds of CPU)."""

    def made() -> list[Any]:
        call, outputs = eager_call(script.model, script.method), []
        with torch.no_grad():
            for index, (values, _target) in enumerate(script.validation()):
                progress.step(f"eager on validation sample {index + 1}/{len(script.validation())}")
                outputs.append(call(values))
        return outputs

    return run.once("eager on validation", made)


def label_agreement(reference: list[Any], outputs: list[Any],
                    labelled: Collection[str] = ()) -> dict[str, float]:
    """Per output with labels (compare.label_agreement: integer outputs, and the float ones in
    `labelled` by their argmax): the share of its labels, pooled over all samples, equal to
    the reference's."""
    counts: dict[str, LabelCount] = {}
    for expected, actual in zip(reference, outputs, strict=True):
        for (name, a), (_, b) in zip(flatten_outputs(expected), flatten_outputs(actual),
                                     strict=True):
            if isinstance(a, torch.Tensor):
                count = counts.get(name, LabelCount())
                if count.add(a, b, name in labelled):
                    counts[name] = count
    return {name: count.share for name, count in counts.items() if count.total}
