"""Precision stage (--precision): one variant, or --precision auto's choice among
AUTO_CANDIDATES by the script's metric (dynexport/precision/ makes and measures them)."""

from __future__ import annotations

from dynexport.capture import Capture
from dynexport.conversion import Converted, Decomposed, program_signature
from dynexport.eager import EagerRun
from dynexport.isolation import run_isolated
from dynexport.measure import eager_on_validation, measure
from dynexport.names import Precision
from dynexport.precision.keep_f32 import fx_nodes_at
from dynexport.precision.records import AccuracyControl, Candidate, PrecisionError, PrecisionResult
from dynexport.precision.variants import apply_precision, variant_ir
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG
from dynexport.script import Script, ScriptError
from dynexport.stage import ABSENT, Request, Run, Stage, StageFailed

# What --precision auto tries, besides f32 (the fastest within the accuracy budget wins).
AUTO_CANDIDATES: tuple[Precision, ...] = ("bf16", "f16", "int8")


def _make_precision(run: Run) -> PrecisionResult:
    """--precision other than f32: calibrates on get_calibration_inputs() if the script has it,
    else on the example and the probe; in a child process like every runtime."""
    script, eager = run.result("load", Script), run.result("eager", EagerRun)
    f32 = run.result("openvino", Converted)
    inputs = eager.inputs
    calibration = script.calibration() if script.calibration else list(inputs.values())
    names = eager.output_names()
    control = None
    if (script.validation is not None and script.metric is not None
            and run.options.precision in ("int8", "auto")):
        # The data is made here, as the accuracy stage makes it, not in the child: torch runs
        # on one thread there, and FlashOcc's scenes made on one thread differ in rounding
        # enough to move its int8 mIoU by 0.1.
        spec = run.result("capture", Capture).program.call_spec.out_spec
        control = AccuracyControl(script.validation(), script.metric, spec,
                                  run.options.accuracy_budget)
    keep_f32 = _kept_nodes(run)

    def made(precision: Precision) -> PrecisionResult:
        return run_isolated(
            lambda: apply_precision(precision, f32.artifact, run.options.out_dir, inputs,
                                    calibration, names, run.options.device,
                                    control=control if precision == "int8" else None,
                                    labelled=script.labelled_outputs(), keep_f32=keep_f32),
            f"--precision {precision}", run.options.isolation)

    if run.options.precision != "auto":
        return made(run.options.precision)
    return _choose(run, script, made)


def _kept_nodes(run: Run) -> list[str]:
    """The FX nodes made at --keep-f32's lines; a line that makes none fails the stage."""
    if not run.options.keep_f32:
        return []
    found = fx_nodes_at(run.result("decompose", Decomposed).program, run.options.keep_f32)
    empty = [location for location, nodes in found.items() if not nodes]
    if empty:
        raise StageFailed(f"--keep-f32 {', '.join(empty)}: no op of the converted program was "
                          "called at that line. Name lines as the report's 'Where it diverges' "
                          "table (or a hazard) shows them: the line of your code that calls "
                          "the op.")
    return [node for nodes in found.values() for node in nodes]


def _choose(run: Run, script: Script, made) -> PrecisionResult:
    """--precision auto: the fastest candidate whose primary metric on the validation data
    stays within --accuracy-budget points of eager f32; f32 itself when none does."""
    if script.validation is None or script.metric is None:
        raise ScriptError(f"--precision auto chooses by accuracy, and {script.path} defines no "
                          "`get_validation_data()` and `metric(outputs, targets)`. Define both "
                          "(contract section 2), or name a precision, e.g. `--precision bf16`.")
    budget = run.options.accuracy_budget
    metric = "the metric"
    tried: list[tuple[PrecisionResult | None, Candidate]] = []
    for precision in AUTO_CANDIDATES:
        try:
            result = made(precision)
        except PrecisionError as exc:  # e.g. int8 without NNCF: say so, try the others
            tried.append((None, Candidate(precision, "", 0.0, 0.0, None, None, str(exc))))
            continue
        accuracy = measure(script, eager_on_validation(run, script),
                           [("openvino", precision, variant_ir(run, result),
                             result.openvino_config)],
                           run.options.device, run.options.isolation, run.options.static,
                           pictures=run.options.out_dir, signature=program_signature(run))
        row, metric = accuracy.rows[-1], accuracy.metric
        tried.append((result, Candidate(precision, result.inference_precision, result.median_ms,
                                        result.speedup, row.value, row.delta,
                                        result.remarks(), row.label_agreement or None)))
    within = [(r, c) for r, c in tried if r is not None and c.delta >= -budget]
    if not within:
        made_any = [r for r, _ in tried if r is not None]
        if not made_any:
            raise StageFailed("--precision auto: no candidate could be made: "
                              + "; ".join(c.note or c.precision for _, c in tried))
        f32_ms = made_any[0].f32_median_ms
        return PrecisionResult(
            "f32", None, dict(DEFAULT_OPENVINO_CONFIG), "f32", f32_ms, f32_ms, 1.0,
            made_any[0].runs, candidates=[c for _, c in tried],
            chosen_because=f"no candidate stays within {budget} {metric} points of eager f32: "
                           "f32 ships")
    chosen, candidate = min(within, key=lambda pair: pair[1].median_ms)
    chosen.candidates = [c for _, c in tried]
    chosen.chosen_because = (
        f"{candidate.precision} is the fastest candidate within {budget} {metric} points of "
        f"eager f32 ({candidate.delta:+.3f}; {candidate.speedup:.2f}× OpenVINO f32)")
    return chosen


PRECISION_STAGE = Stage("precision", _make_precision,
                        needs=("capture", "decompose", "eager", "openvino"),
                        requested=lambda run: ABSENT if run.options.precision == "f32"
                        else Request.skipped_unless(run.options.device_missing))
