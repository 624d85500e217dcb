"""OpenVINO stage: ExportedProgram → openvino.Model straight through OpenVINO's PyTorch
frontend (no ONNX in between), with dynexport's custom-op conversion extensions."""

from __future__ import annotations

import os
from pathlib import Path

import openvino as ov
from torch.export import ExportedProgram

from dynexport.backends.shape_env import isolated_shape_env
from dynexport.custom_ops.registry import openvino_decoder_input, openvino_extensions
from dynexport.quiet import quiet_torch


def to_openvino(program: ExportedProgram) -> ov.Model:
    """Convert `program` to an in-memory openvino.Model."""
    with isolated_shape_env(program), quiet_torch():
        # Not convert_model(program): its decomposition would expand dynexport's custom ops
        # before their ConversionExtensions are consulted (see dynexport/custom_ops/README.md).
        return ov.convert_model(openvino_decoder_input(program),
                                extension=openvino_extensions() or None)


def save_openvino(model: ov.Model, directory: str | os.PathLike) -> Path:
    """Write `model` as `directory/model.xml` + `.bin`, weights kept in f32 (OpenVINO's
    default would compress them to f16, which verification at f32 must not see)."""
    xml = Path(directory) / "model.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, xml, compress_to_fp16=False)
    return xml
