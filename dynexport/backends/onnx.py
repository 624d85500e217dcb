"""ONNX stage: ExportedProgram → model.onnx through torch.onnx's dynamo exporter, with
dynexport's custom-op translations, checked by onnx.checker."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.export import ExportedProgram

from dynexport import progress
from dynexport.adapters.torch_export import isolated_shape_env
from dynexport.custom_ops.registry import OpRegistry, resolve
from dynexport.inputs import Signature, program_output_names
from dynexport.quiet import quiet_torch


def to_onnx(program: ExportedProgram, path: str | os.PathLike,
            registry: OpRegistry | None = None) -> Path:
    """Write `program` as a standard-ops ONNX model at `path` and check it; return the path.
    Custom ops use the ONNX translations of `registry` (None: the default registry)."""
    table = resolve(registry).onnx_translation_table()
    path = Path(path)
    names = program_output_names(program)  # None keeps torch.onnx's names
    path.parent.mkdir(parents=True, exist_ok=True)
    with isolated_shape_env(program), quiet_torch():
        onnx_program = torch.onnx.export(
            program, (), dynamo=True, verbose=False,
            custom_translation_table=table, output_names=names,
            # Weights stay inside model.onnx unless the model is too large for one protobuf.
            external_data=False,
        )
    _program_input_names(onnx_program.model, program)
    progress.step("saving and checking model.onnx")
    onnx_program.save(path, external_data=_too_large_for_protobuf(onnx_program))
    # here, not at import: ml_dtypes is slow to import, and the pipeline's process never needs it
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    return path


def _program_input_names(model, program: ExportedProgram) -> None:
    """Graph inputs named as the program names them. torch.onnx renames an input that the
    model returns as it is (`x` becomes `x_orig`, with an Identity to the output): the ONNX and
    OpenVINO models would then take differently named inputs."""
    wanted = Signature.of(program).inputs
    inputs = list(model.graph.inputs)
    if len(inputs) != len(wanted):
        return
    taken = {value.name for node in model.graph for value in node.outputs}
    taken |= {value.name for value in model.graph.outputs} | set(model.graph.initializers)
    for value, name in zip(inputs, wanted, strict=True):
        if value.name != name and name not in taken:
            value.name = name


def _too_large_for_protobuf(onnx_program) -> bool:
    size = sum(value.const_value.nbytes for value in onnx_program.model.graph.initializers.values()
               if value.const_value is not None)
    return size >= 1_800_000_000
