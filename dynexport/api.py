"""The library API of contract §5; the CLI is a thin layer over the same stages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from torch.export import ExportedProgram

from dynexport.backends.onnx import to_onnx as _to_onnx
from dynexport.backends.openvino import to_openvino as _to_openvino
from dynexport.capture import capture
from dynexport.decompositions import decompose
from dynexport.inputs import Inputs


def export(model: torch.nn.Module, args: tuple = (), kwargs: dict[str, Any] | None = None,
           dynamic_shapes: Any = None) -> ExportedProgram:
    """Capture `model(*args, **kwargs)` (strict → non-strict → draft) and apply dynexport's
    decompositions; the result converts with plain `openvino.convert_model(ep)` and
    `torch.onnx.export(ep, dynamo=True)` too."""
    captured = capture(model, Inputs(tuple(args), dict(kwargs or {})), dynamic_shapes)
    return decompose(captured.program)


def to_onnx(program: ExportedProgram, path: str | os.PathLike) -> Path:
    """Write `program` as an ONNX file of standard ops; return its path."""
    return _to_onnx(program, path)


def to_openvino(program: ExportedProgram) -> ov.Model:
    """Convert `program` to an openvino.Model (save it with openvino.save_model)."""
    return _to_openvino(program)
