"""Accuracy stage: the script's metric on its validation data, for eager PyTorch at f32, each
runtime at f32 and the --precision variant, each against eager f32 (contract §2), measured by
measure.py.

Runs when the script defines `get_validation_data()` and `metric(outputs, targets)`. A picture
that fails does not stop the measurement: the rows are all measured, then the stage fails
naming `picture`, its rows kept as the failure's evidence."""

from __future__ import annotations

from pathlib import Path

from dynexport.conversion import converted_models, program_signature
from dynexport.measure import Accuracy, AccuracyRow, eager_on_validation, measure, picture_path
from dynexport.names import BACKENDS
from dynexport.precision import PrecisionResult, variant_ir
from dynexport.script import Script
from dynexport.stage import ABSENT, Request, Run, Stage, StageFailed


def _measure_accuracy(run: Run) -> Accuracy:
    script = run.result("load", Script)
    runtimes = [(runtime, "f32", artifact, None) for runtime, artifact in converted_models(run)]
    variant = run.result("precision", PrecisionResult)
    if variant is not None and not variant.candidates:
        runtimes.append(("openvino", variant.precision, variant_ir(run, variant),
                         variant.openvino_config))
    out_dir = run.options.out_dir
    accuracy = measure(script, eager_on_validation(run, script), runtimes, run.options.device,
                       run.options.isolation, run.options.static, pictures=out_dir,
                       signature=program_signature(run))
    if variant is not None:  # --precision auto measured (and drew) each candidate already
        accuracy.rows += [AccuracyRow("openvino", c.precision, c.value, c.delta,
                                      _drawn(script, out_dir, "openvino", c.precision),
                                      c.label_agreement or {})
                          for c in variant.candidates if c.value is not None]
    if accuracy.picture_error is not None:  # the rows stay in the report as evidence
        raise StageFailed(accuracy.picture_error, evidence=accuracy)
    return accuracy


def _drawn(script: Script, out_dir: Path, runtime: str, precision: str) -> str | None:
    """The picture path of a row measured by an earlier stage, if it drew one (a file left by
    an earlier run was removed before drawing)."""
    relative = picture_path(runtime, precision)
    return relative if script.picture is not None and (out_dir / relative).is_file() else None


def _requested(run: Run) -> Request:
    script = run.result("load", Script)
    if script is None or script.validation is None or script.metric is None:
        return ABSENT  # no validation data or metric: nothing to measure
    return Request.skipped_unless("--no-verify" if not run.options.verify
                                  else run.options.device_missing)


ACCURACY_STAGE = Stage("accuracy", _measure_accuracy, needs=("eager",), needs_any=BACKENDS,
                       requested=_requested)
