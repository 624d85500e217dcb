"""Runs the stages in order — load, capture, decompose, onnx, openvino, verify, precision,
serving, benchmark — times each, keeps the artifacts of those that succeeded, and always writes
the report."""

from __future__ import annotations

import os
import re
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from dynexport.backends.onnx import to_onnx
from dynexport.backends.openvino import save_openvino, to_openvino
from dynexport.benchmark import benchmark
from dynexport.capture import CaptureError, capture
from dynexport.coverage import (
    OpCoverage,
    op_coverage,
    translate_backend_error,
    unsupported_op_hazards,
    unsupported_ops,
)
from dynexport.decompositions import decompose
from dynexport.hazards.baked_constant import baked_constant_hazards
from dynexport.hazards.collect import find_hazards
from dynexport.inputs import Inputs, eager_call, flatten_outputs
from dynexport.precision import Precision, apply_precision
from dynexport.quiet import quiet_torch
from dynexport.report import Report, StageRecord
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG, OnnxRuntimeRunner, OpenVINORunner, Runner
from dynexport.script import Script, ScriptError, load_script
from dynexport.serving import Layout, ServingRecord, model_name, write_ovms, write_triton
from dynexport.verify import verify

TARGETS = ("onnx", "openvino")


@dataclass
class Options:
    """What the user asked for on the command line."""

    out_dir: Path
    targets: tuple[str, ...] = TARGETS
    verify: bool = True
    bench: bool = False
    device: str = "CPU"
    openvino_config: dict[str, Any] | None = None  # None: f32 pinned (runtimes.py)
    precision: Precision = "f32"  # f32: verification's model is the one that ships
    layouts: tuple[Layout, ...] = ()  # serving repositories to write


class StageObserver(Protocol):
    def started(self, name: str) -> None: ...

    def finished(self, record: StageRecord, error: BaseException | None) -> None: ...


class StageFailed(RuntimeError):
    """A stage could not do its job; the message is the report's error text."""


@dataclass
class _Run:
    report: Report
    observer: StageObserver | None
    artifacts: dict[str, Path] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        record = StageRecord(name=name, status="ok")
        if self.observer:
            self.observer.started(name)
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            yield record
        except ScriptError:
            record.status, record.error = "failed", "the script is unusable"
            raise
        except Exception as exc:  # a failed stage is recorded; later stages still run
            error = exc
            record.status, record.error = "failed", _error_text(exc)
        finally:
            record.seconds = round(time.perf_counter() - start, 3)
            self.report.stages.append(record)
            if self.observer:
                self.observer.finished(record, error)

    def skip(self, name: str, reason: str) -> None:
        record = StageRecord(name=name, status="skipped", error=reason)
        self.report.stages.append(record)
        if self.observer:
            self.observer.finished(record, None)


def remembered(call: Callable[[Inputs], Any]) -> Callable[[Inputs], Any]:
    """`call` run once per Inputs object: the hazard pass's watched eager run and verification
    share one eager run per input (a FlashOcc M0 frame is ~4 s of eager time). Not for timing."""
    results: dict[int, tuple[Inputs, Any]] = {}

    def run(inputs: Inputs) -> Any:
        if id(inputs) not in results:
            results[id(inputs)] = (inputs, call(inputs))  # the Inputs kept: ids stay unique
        return results[id(inputs)][1]

    return run


ScriptLoader = Callable[[str | os.PathLike, list[str]], Script]


def run(script_path: str | os.PathLike, script_args: list[str], options: Options,
        observer: StageObserver | None = None, loader: ScriptLoader = load_script) -> Report:
    """Run every stage on the script; raise ScriptError (after writing the report, where the
    script exists) when the script is unusable. `loader` turns the path and its arguments into
    a Script (a SCRIPT.py by default; an integration may read a config instead)."""
    report = Report(script=str(script_path))
    state = _Run(report, observer)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with state.stage("load"):
            script = loader(script_path, script_args)
        _run_stages(state, script, options)
    finally:
        if Path(script_path).is_file():
            report.write(options.out_dir)
    return report


def script_coverage(script_path: str | os.PathLike, script_args: list[str]) -> list[OpCoverage]:
    """`python -m dynexport ops`: which ops of the script's model each backend can lower,
    without converting. Raises ScriptError for an unusable script, CaptureError when nothing
    can be captured."""
    script = load_script(script_path, script_args)
    captured = capture(script.model, script.example, script.dynamic_shapes, script.method)
    with quiet_torch():
        return op_coverage(captured.program)


def _run_stages(state: _Run, script: Script, options: Options) -> None:
    report, out = state.report, options.out_dir
    report.hazards += script.hazards
    program = None
    eager = eager_call(script.model, script.method)
    reference = remembered(eager)
    with state.stage("capture"):
        try:
            captured = capture(script.model, script.example, script.dynamic_shapes, script.method)
        except CaptureError as exc:
            captured = exc.capture
            raise StageFailed(str(exc)) from exc
        finally:
            report.capture_strategy = captured.strategy
            report.hazards += find_hazards(reference, [script.example, script.probe], captured,
                                           script.model, script.method)
    if report.capture_strategy is None:
        for name in ("decompose", *options.targets, "verify"):
            state.skip(name, "nothing was captured")
        return
    with state.stage("decompose") as record, quiet_torch():
        program = decompose(captured.program)
        pt2 = out / "exported.pt2"
        torch.export.save(program, pt2)
        record.artifact = str(pt2)
    if program is None:
        for name in (*options.targets, "verify"):
            state.skip(name, "decomposition failed")
        return
    if "onnx" in options.targets:
        with state.stage("onnx") as record, _naming_unsupported_ops(report, program, "onnx"):
            record.artifact = str(to_onnx(program, out / "model.onnx"))
            state.artifacts["onnx"] = Path(record.artifact)
    if "openvino" in options.targets:
        with state.stage("openvino") as record, \
                _naming_unsupported_ops(report, program, "openvino"):
            record.artifact = str(save_openvino(to_openvino(program), out / "openvino"))
            state.artifacts["openvino"] = Path(record.artifact)
    if not state.artifacts:
        state.skip("verify", "no converted model to verify")
        return
    runners: list[Runner] = []
    if options.verify:
        with state.stage("verify"):
            runners = _runners(state.artifacts, options)
            report.verification = verify(reference, runners,
                                         {"example": script.example, "probe": script.probe})
            report.hazards += baked_constant_hazards(report.verification, script.model,
                                                     script.method)
    else:
        state.skip("verify", "--no-verify")
    if not options.bench:
        runners = []  # their sessions (~1 GB for FlashOcc M0) would sit idle through the rest
    variants = _precision_stage(state, script, options, reference)
    if options.layouts:
        with state.stage("serving") as record:
            report.serving = _serving(state, script, options)
            record.artifact = report.serving[0].repository if report.serving else None
    if options.bench:
        with state.stage("benchmark"):
            report.benchmark = benchmark(
                eager, (runners or _runners(state.artifacts, options)) + variants, script.example)


def _precision_stage(state: _Run, script: Script, options: Options,
                     reference: Callable[[Inputs], Any]) -> list[Runner]:
    """--precision other than f32: the reduced-precision OpenVINO model, timed and compared
    with f32 (verification stays on f32). Returns its runner for the benchmark stage."""
    if options.precision == "f32":
        return []
    if "openvino" not in state.artifacts:
        state.skip("precision", f"--precision {options.precision} needs the openvino target")
        return []
    with state.stage("precision") as record:
        calibration = script.calibration() if script.calibration else [script.example,
                                                                      script.probe]
        names = [name for name, _ in flatten_outputs(reference(script.example))]
        result, runner = apply_precision(
            options.precision, state.artifacts["openvino"], options.out_dir,
            {"example": script.example, "probe": script.probe}, calibration, names,
            options.device)
        state.report.precision = result
        record.artifact = result.artifact
        if result.artifact:
            state.artifacts["openvino_variant"] = Path(result.artifact)
        return [runner]
    return []  # the stage failed; its record says why


def _serving(state: _Run, script: Script, options: Options) -> list[ServingRecord]:
    """The --layout repositories, from the artifacts that verification (and --precision)
    measured: OVMS gets the --precision IR and its compile config."""
    name = model_name(Path(script.path).stem)
    written = []
    for layout in options.layouts:
        needed = "openvino" if layout == "ovms" else "onnx"
        if needed not in state.artifacts:
            raise StageFailed(f"--layout {layout} needs the {needed} target (--to {needed})")
        if layout == "ovms":
            precision = state.report.precision
            xml = state.artifacts.get("openvino_variant", state.artifacts["openvino"])
            config = precision.openvino_config if precision else (
                options.openvino_config or DEFAULT_OPENVINO_CONFIG)
            written.append(write_ovms(xml, options.out_dir / "ovms", name, config))
        else:
            written.append(write_triton(state.artifacts["onnx"], options.out_dir / "triton",
                                        name))
    return written


@contextmanager
def _naming_unsupported_ops(report: Report, program, backend: str) -> Iterator[None]:
    """A failed conversion becomes `unsupported_ops` records and hazards at the user's lines
    (the coverage preflight, run only then: a conversion that succeeds needs no second pass),
    and the stage error names the ops instead of the exporter's raw exception."""
    try:
        yield
    except Exception as exc:
        with quiet_torch():
            found = unsupported_ops(program, (backend,)) or \
                translate_backend_error(exc, backend, program)
        if not found:
            raise
        report.unsupported_ops += found
        report.hazards += unsupported_op_hazards(found)
        names = ", ".join(sorted({op.op for op in found}))
        raise StageFailed(f"{backend} cannot lower {names} (see unsupported_ops); "
                          f"{_error_text(exc).splitlines()[0][:200]}") from exc


def _runners(artifacts: dict[str, Path], options: Options) -> list[Runner]:
    runners: list[Runner] = []
    if "onnx" in artifacts:
        runners.append(OnnxRuntimeRunner(artifacts["onnx"]))
    if "openvino" in artifacts:
        runners.append(OpenVINORunner(artifacts["openvino"], options.device,
                                      options.openvino_config))
    return runners


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _error_text(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    if not isinstance(exc, StageFailed):
        text = f"{type(exc).__name__}: {text}"
    lines = text.splitlines()
    return "\n".join(lines[:12]) + ("\n…" if len(lines) > 12 else "")


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
