"""Walks the stages in order, records ok/failed/skipped for each, then runs the hazard step on
the evidence they left and always writes the report.

The pipeline knows no stage's policy: each stage module defines its Stage (what it needs, when
it is requested, what it does). A stage fails by raising; an exception that comes from
dynexport's own code (not from the user's model, torch or a backend) is reported as a dynexport
bug, with the traceback written next to the report under --debug."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

from dynexport.benchmark import BenchmarkRecord
from dynexport.capture import Capture
from dynexport.conversion import ConversionFailure, Converted, Decomposed
from dynexport.coverage import OpCoverage, op_coverage, unsupported_ops
from dynexport.eager import EagerRun
from dynexport.errors import format_traceback, summary
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.find import find_hazards
from dynexport.hazards.handled import find_handled
from dynexport.measure import Accuracy
from dynexport.names import BACKENDS
from dynexport.precision import PrecisionResult
from dynexport.quiet import quiet_torch
from dynexport.report import Report
from dynexport.script import Script, ScriptError, ScriptLoader, load_script
from dynexport.serving import Served
from dynexport.stage import Options, Run, Stage, StageFailed, StageRecord, Started
from dynexport.stages.accuracy import ACCURACY_STAGE
from dynexport.stages.benchmark import BENCHMARK_STAGE
from dynexport.stages.capture import CAPTURE_STAGE
from dynexport.stages.conversion import DECOMPOSE_STAGE, ONNX_STAGE, OPENVINO_STAGE
from dynexport.stages.eager import EAGER_STAGE
from dynexport.stages.load import load_stage
from dynexport.stages.localize import LOCALIZE_STAGE, Localized
from dynexport.stages.precision import PRECISION_STAGE
from dynexport.stages.serving import SERVING_STAGE
from dynexport.stages.verify import VERIFY_STAGE

__all__ = ["Options", "StageObserver", "run_script", "script_coverage", "stages"]

_PACKAGE = Path(__file__).resolve().parent
# Exception types that mean a mistake in code, not a refusal: raised inside dynexport, a bug.
_BUG_TYPES = (AttributeError, NameError, KeyError, IndexError, AssertionError,
              ZeroDivisionError, RecursionError, UnboundLocalError)


class StageObserver(Protocol):
    def started(self, name: str) -> None: ...

    def finished(self, record: StageRecord, error: BaseException | None) -> None: ...


def stages(loader: ScriptLoader = load_script) -> list[Stage]:
    """Every stage, in the order they run."""
    return [load_stage(loader), EAGER_STAGE, CAPTURE_STAGE, DECOMPOSE_STAGE, ONNX_STAGE,
            OPENVINO_STAGE, VERIFY_STAGE, PRECISION_STAGE, ACCURACY_STAGE, LOCALIZE_STAGE,
            SERVING_STAGE, BENCHMARK_STAGE]


def run_script(script_path: str | os.PathLike, script_args: list[str], options: Options,
        observer: StageObserver | None = None, loader: ScriptLoader = load_script,
        debug: bool = False) -> Report:
    """Run every requested stage on the script; raise ScriptError (after writing the report,
    where the script exists) when the script is unusable."""
    run = Run(str(script_path), list(script_args), options)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        execute(run, stages(loader), observer, debug)
    finally:
        report = build_report(run, evidence(run))
        if Path(script_path).is_file():
            report.write(options.out_dir)
    return report


def execute(run: Run, plan: list[Stage], observer: StageObserver | None = None,
            debug: bool = False) -> Run:
    """Run `plan`'s stages on `run` in order. A stage with `start` runs on while the next
    ones start; the run waits for it when a stage reads its result (`Run.settle`), and at the
    end. A ScriptError (the script is unusable, exit status 2), from whichever stage calls the
    script's functions, ends the run."""
    for stage in plan:
        _launch(run, stage, observer, debug)
        _raise_script_error(run)
    run.settle_all()
    _raise_script_error(run)
    order = {stage.name: index for index, stage in enumerate(plan)}
    run.records.sort(key=lambda record: order.get(record.name, -1))
    return run


def _raise_script_error(run: Run) -> None:
    error = next((e for e in run.errors.values() if isinstance(e, ScriptError)), None)
    if error is not None:
        run.settle_all()  # the stages still running keep their artifacts and records
        raise error


def _launch(run: Run, stage: Stage, observer: StageObserver | None, debug: bool) -> None:
    """Run `stage`, or start it (`stage.start`) and leave its recording to `Run.settle`, or
    record why it is skipped."""
    request = stage.requested(run)
    if request.kind == "absent":
        return
    why_not = request.reason if request.kind == "skipped" else _missing_needs(run, stage)
    if why_not:
        _record(run, observer, StageRecord(stage.name, "skipped", error=why_not), None)
        return
    if observer:
        observer.started(stage.name)
    start = time.perf_counter()
    started: Started | None = None
    try:
        if stage.start is not None:
            started = stage.start(run)
        else:
            run.results[stage.name] = stage.work(run)
        error = None
    except Exception as exc:  # a failed stage is recorded; later stages still run
        error = exc

    def finish() -> None:
        nonlocal error
        if started is not None and error is None:
            try:
                run.results[stage.name] = started.result()
            except Exception as exc:  # a failed stage is recorded; later stages still run
                error = exc
        record = StageRecord(stage.name, "ok")
        if error is not None:
            run.errors[stage.name] = error
            record.status, record.error = "failed", _error_text(error, run, stage.name, debug)
        record.artifact = getattr(run.results.get(stage.name), "artifact", None)
        own = started.seconds if started is not None else None
        record.seconds = round(own if own is not None else time.perf_counter() - start, 3)
        _record(run, observer, record, error)

    if started is not None and error is None:
        run.pending[stage.name] = finish
    else:
        finish()


def _record(run: Run, observer: StageObserver | None, record: StageRecord,
            error: BaseException | None) -> None:
    run.records.append(record)
    if observer:
        observer.finished(record, error)


def _missing_needs(run: Run, stage: Stage) -> str | None:
    for need in stage.needs:
        if run.status(need) != "ok":
            return f"needs {need}, which {_state_words(run.status(need))}"
    if stage.needs_any and not any(run.status(n) == "ok" for n in stage.needs_any):
        return f"needs a converted model ({' or '.join(stage.needs_any)}); none was converted"
    return None


def _state_words(status: str | None) -> str:
    return {"failed": "failed", "skipped": "was skipped"}.get(status, "was not requested")


def _error_text(exc: BaseException, run: Run, stage: str, debug: bool) -> str:
    if isinstance(exc, ScriptError):
        return "the script is unusable"
    if not _is_dynexport_bug(exc):
        return str(exc) if isinstance(exc, StageFailed) else summary(exc, max_lines=12,
                                                                     max_chars=2000)
    text = (f"dynexport bug: {summary(exc)} (in dynexport's own code, not your model; please "
            "report it with report.json")
    if debug:
        path = run.options.out_dir / f"traceback_{stage}.txt"
        path.write_text(format_traceback(exc))
        text += f" and {path}"
    return text + ")"


def _is_dynexport_bug(exc: BaseException) -> bool:
    """A mistake-type exception raised by a frame of dynexport's own package."""
    if not isinstance(exc, _BUG_TYPES):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(
        _PACKAGE)


def evidence(run: Run) -> Evidence:
    """What the stages left, for the hazard and handled steps."""
    script = run.result("load", Script)
    eager = run.evidence("eager", EagerRun)
    decomposed = run.result("decompose", Decomposed)
    localized = run.result("localize", Localized) or Localized()
    notes = list(localized.notes)
    if script is not None and eager is not None and eager.inputs["probe"] is not script.probe:
        notes.append("--static: the script's probe has other sizes than the example, so a "
                     "generated probe of the example's sizes was verified instead")
    failures = [failure for backend in BACKENDS
                if (failure := run.evidence(backend, ConversionFailure)) is not None]
    for part in eager.unwatched if eager else []:
        at = f" at {part.location.file}:{part.location.line}" if part.location else ""
        notes.append(f"eager ran {part.op}{at} without looking into its branches (torch "
                     "compiles them even in eager, and cannot compile the watch): .item(), "
                     "int() or numpy conversions inside them were not looked for; "
                     "torch.export captured the branches itself")
    if decomposed is not None and decomposed.unsaved:
        notes.append("exported.pt2 was not written (torch.export.save: "
                     f"{decomposed.unsaved}); the conversions ran from the program in memory")
    return Evidence(
        model=script.model if script else None,
        method=script.method if script else "forward",
        known=list(script.hazards) if script else [],
        conversions=eager.conversions if eager else [],
        outputs=[leaf for outputs in eager.outputs.values() for leaf in outputs] if eager else [],
        capture=run.evidence("capture", Capture),
        unsupported_ops=[op for failure in failures for op in failure.unsupported_ops],
        notes=notes + [note for failure in failures for note in failure.notes],
        verification=run.results.get("verify") or [],
        divergence=localized.entries,
        example=script.example if script else None,
        replaced=decomposed.replaced if decomposed else [],
        unused_inputs={backend: converted.unused_inputs for backend in BACKENDS
                       if (converted := run.result(backend, Converted)) is not None
                       and converted.unused_inputs})


def build_report(run: Run, facts: Evidence) -> Report:
    served = run.result("serving", Served)
    benchmark = run.results.get("benchmark") or []
    return Report(
        script=run.script_path,
        capture_strategy=facts.capture.strategy if facts.capture else None,
        stages=run.records,
        hazards=find_hazards(facts),
        handled=find_handled(facts),
        unsupported_ops=facts.unsupported_ops,
        verification=facts.verification,
        benchmark=[r for r in benchmark if isinstance(r, BenchmarkRecord)],
        precision=run.result("precision", PrecisionResult),
        serving=served.records if served else [],
        accuracy=run.evidence("accuracy", Accuracy),
        divergence=facts.divergence,
        notes=facts.notes)


def explain_evidence(script: Script) -> tuple[Run, Evidence]:
    """The hazard-finding part of the pipeline (eager, capture) on an already loaded script,
    with the coverage preflight in place of the conversions."""
    run = Run(str(script.path), [], Options(out_dir=Path(".")))
    run.results["load"] = script
    run.records.append(StageRecord("load", "ok"))
    execute(run, [EAGER_STAGE, CAPTURE_STAGE])
    facts = evidence(run)
    captured = run.result("capture", Capture)
    if captured is not None:
        with quiet_torch():
            facts.unsupported_ops = unsupported_ops(captured.program)
        facts.notes += facts.unsupported_ops.notes
    return run, facts


def explain(script: Script) -> Report:
    """dynexport.explain(): every hazard found without converting."""
    report = build_report(*explain_evidence(script))
    report.script = type(script.model).__name__
    return report


def script_coverage(script_path: str | os.PathLike, script_args: list[str]) -> list[OpCoverage]:
    """`python -m dynexport ops`: which ops of the script's model each backend can lower,
    without converting. Raises ScriptError for an unusable script, CaptureError when nothing
    can be captured."""
    from dynexport.capture import capture

    script = load_script(script_path, script_args)
    captured = capture(script.model, script.example, script.dynamic_shapes, script.method)
    with quiet_torch():
        return op_coverage(captured.program)

