"""The library API of contract §5; the CLI is a thin layer over the same stages."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from torch.export import ExportedProgram

from dynexport.backends.onnx import to_onnx as _to_onnx
from dynexport.backends.openvino import to_openvino as _to_openvino
from dynexport.capture import CaptureError, capture
from dynexport.coverage import unsupported_op_hazards, unsupported_ops
from dynexport.decompositions import decompose
from dynexport.hazards.collect import find_hazards
from dynexport.inputs import Inputs, eager_call, make_probe, normalize_inputs
from dynexport.quiet import quiet_torch
from dynexport.report import Report, StageRecord


def export(model: torch.nn.Module, args: tuple = (), kwargs: dict[str, Any] | None = None,
           dynamic_shapes: Any = None) -> ExportedProgram:
    """Capture `model(*args, **kwargs)` (strict → non-strict → draft) and apply dynexport's
    decompositions; the result converts with plain `openvino.convert_model(ep)` and
    `torch.onnx.export(ep, dynamo=True)` too."""
    captured = capture(model, Inputs(tuple(args), dict(kwargs or {})), dynamic_shapes)
    with quiet_torch():
        return decompose(captured.program)


def to_onnx(program: ExportedProgram, path: str | os.PathLike) -> Path:
    """Write `program` as an ONNX file of standard ops; return its path."""
    return _to_onnx(program, path)


def to_openvino(program: ExportedProgram) -> ov.Model:
    """Convert `program` to an openvino.Model (save it with openvino.save_model)."""
    return _to_openvino(program)


def explain(model: torch.nn.Module, args: tuple = (), kwargs: dict[str, Any] | None = None,
            dynamic_shapes: Any = None, method: str = "forward",
            probe: Any = None) -> Report:
    """Every hazard of `model` in one pass, without converting: capture with every fallback,
    watch an eager run on the example and on `probe` (a second input of the same structure;
    one is made when not given). The Report renders in a terminal and in Jupyter."""
    example = Inputs(tuple(args), dict(kwargs or {}))
    probe_inputs = normalize_inputs(probe, source="probe") if probe is not None \
        else make_probe(example)
    start = time.perf_counter()
    try:
        captured = capture(model, example, dynamic_shapes, method)
        stage = StageRecord("capture", "ok")
    except CaptureError as exc:
        captured = exc.capture
        stage = StageRecord("capture", "failed", error=str(exc))
    stage.seconds = round(time.perf_counter() - start, 3)
    hazards = find_hazards(eager_call(model, method), [example, probe_inputs],
                           captured, model, method)
    missing = []
    if captured.program is not None:
        with quiet_torch():
            missing = unsupported_ops(captured.program)
    return Report(script=type(model).__name__, capture_strategy=captured.strategy,
                  stages=[stage], hazards=hazards + unsupported_op_hazards(missing),
                  unsupported_ops=missing)
