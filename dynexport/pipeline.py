"""Runs the stages in order — load, capture, decompose, onnx, openvino, verify, benchmark —
times each, keeps the artifacts of those that succeeded, and always writes the report."""

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
from dynexport.quiet import quiet_torch
from dynexport.report import Report, StageRecord
from dynexport.runtimes import OnnxRuntimeRunner, OpenVINORunner, Runner
from dynexport.script import Script, ScriptError, load_script
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


def eager_call(model: torch.nn.Module, method: str = "forward"):
    """The reference: the user's model, called the way the script says."""
    function = getattr(model, method)
    return lambda inputs: function(*inputs.args, **inputs.kwargs)


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
    with state.stage("capture"):
        try:
            captured = capture(script.model, script.example, script.dynamic_shapes, script.method)
        except CaptureError as exc:
            captured = exc.capture
            raise StageFailed(str(exc)) from exc
        finally:
            report.capture_strategy = captured.strategy
            report.hazards += find_hazards(eager, [script.example, script.probe], captured,
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
            report.verification = verify(eager, runners,
                                         {"example": script.example, "probe": script.probe})
            report.hazards += baked_constant_hazards(report.verification, script.model,
                                                     script.method)
    else:
        state.skip("verify", "--no-verify")
    if options.bench:
        with state.stage("benchmark"):
            report.benchmark = benchmark(eager, runners or _runners(state.artifacts, options),
                                         script.example)


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
