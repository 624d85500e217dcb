"""The library API of contract §5; the CLI is a thin layer over the same stages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from torch.export import ExportedProgram

from dynexport import pipeline
from dynexport.backends.onnx import to_onnx as _to_onnx
from dynexport.backends.openvino import to_openvino as _to_openvino
from dynexport.capture import capture
from dynexport.custom_ops.registry import OpRegistry
from dynexport.decompositions import decompose
from dynexport.inputs import Inputs, make_probe, normalize_inputs
from dynexport.quiet import quiet_torch
from dynexport.report import Report
from dynexport.script import Script


def export(model: torch.nn.Module, args: tuple = (), kwargs: dict[str, Any] | None = None,
           dynamic_shapes: Any = None) -> ExportedProgram:
    """Capture `model(*args, **kwargs)` (strict → non-strict → draft) and apply dynexport's
    decompositions; the result converts with plain `openvino.convert_model(ep)` and
    `torch.onnx.export(ep, dynamo=True)` too."""
    captured = capture(model, Inputs(tuple(args), dict(kwargs or {})), dynamic_shapes)
    with quiet_torch():
        return decompose(captured.program)


def to_onnx(program: ExportedProgram, path: str | os.PathLike,
            registry: OpRegistry | None = None) -> Path:
    """Write `program` as an ONNX file of standard ops; return its path. Custom ops use the
    translations of `registry` (a `dynexport.custom_ops.registry.OpRegistry`; None: the
    default one, which holds dynexport's built-in ops)."""
    return _to_onnx(program, path, registry)


def to_openvino(program: ExportedProgram, registry: OpRegistry | None = None) -> ov.Model:
    """Convert `program` to an openvino.Model (save it with openvino.save_model). Custom ops
    use the conversions of `registry` (None: the default registry)."""
    return _to_openvino(program, registry)


def explain(model: torch.nn.Module, args: tuple = (), kwargs: dict[str, Any] | None = None,
            dynamic_shapes: Any = None, method: str = "forward",
            probe: Any = None) -> Report:
    """Every hazard of `model` in one pass, without converting: watch an eager run on the
    example and on `probe` (a second input of the same structure; one is made when not given),
    capture with every fallback, and find the ops a backend could not lower. The Report renders
    in a terminal and in Jupyter."""
    example = Inputs(tuple(args), dict(kwargs or {}))
    probe_inputs = normalize_inputs(probe, source="probe") if probe is not None \
        else make_probe(example)
    script = Script(path=Path(type(model).__name__), model=model, example=example,
                    probe=probe_inputs, dynamic_shapes=dynamic_shapes, method=method)
    return pipeline.explain(script)
