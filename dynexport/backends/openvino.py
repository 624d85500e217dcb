"""OpenVINO stage: ExportedProgram → openvino.Model straight through OpenVINO's PyTorch
frontend (no ONNX in between), with dynexport's custom-op conversion extensions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from openvino import opset13 as ops
from openvino import opset16
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from dynexport.adapters import openvino_frontend
from dynexport.adapters.torch_export import isolated_shape_env
from dynexport.custom_ops.registry import OpRegistry, resolve
from dynexport.inputs import program_output_names
from dynexport.quiet import quiet_torch


def to_openvino(program: ExportedProgram, registry: OpRegistry | None = None) -> ov.Model:
    """Convert `program` to an in-memory openvino.Model; custom ops use the OpenVINO
    conversions of `registry` (None: the default registry)."""
    registry = resolve(registry)
    with isolated_shape_env(program), quiet_torch():
        # Not convert_model(program): its decomposition would expand dynexport's custom ops
        # before their ConversionExtensions are consulted (see dynexport/custom_ops/README.md).
        model = ov.convert_model(registry.openvino_decoder_input(program),
                                 extension=registry.openvino_extensions() or None)
    return _named_outputs(_tensor_inputs_only(model, program), program)


def _named_outputs(model: ov.Model, program: ExportedProgram) -> ov.Model:
    """Outputs named as the program's (`occupancy`, `logits`: the report's names and the
    ONNX model's) instead of the frontend's node names (`_to_copy_5:0`)."""
    names = program_output_names(program)
    if names is None or len(names) != len(model.outputs):
        return model
    # The Parameters keep the frontend's names where _tensor_inputs_only could not pair them.
    taken = {name for parameter in model.get_parameters()
             for name in parameter.output(0).get_names()}
    if taken & set(names):
        return model
    parameters = set(model.get_parameters())
    for result, name in zip(model.get_results(), names, strict=True):
        source = result.input_value(0)
        if source.get_node() in parameters:  # an input returned as it is: one tensor, two names
            identity = opset16.identity(source)
            result.input(0).replace_source_output(identity.output(0))
            source = identity.output(0)
        source.get_tensor().set_names({name})
    model.validate_nodes_and_infer_types()
    return model


# rt_info key (saved in model.xml) listing the program inputs the frontend dropped and this
# module put back as unused Parameters.
UNUSED_INPUTS_KEY = "dynexport_unused_inputs"


def _tensor_inputs_only(model: ov.Model, program: ExportedProgram) -> ov.Model:
    """One Parameter per tensor input of the program, in the program's order and named as the
    program (and the ONNX model) names it, so model.xml and model.onnx take the same inputs by
    name and by position.

    The frontend makes a Parameter for every user input of the program, non-tensor ones too
    (mmdet's `return_loss=False` becomes a Parameter of dynamic rank and type that the CPU
    plugin refuses to compile), and names them from the method's signature, which shifts
    the names when keyword arguments hold several tensors: where the counts agree (of all
    inputs, or of the tensor ones), the program's inputs pair with the Parameters in order. It
    also drops an input the computation
    does not use (one read only for a size fixed at capture, `torch.zeros(x.shape[0] * 2)`):
    then the Parameters pair by name and each dropped input comes back as an unused Parameter
    (listed in the model's rt_info under UNUSED_INPUTS_KEY)."""
    user_inputs = {spec.arg.name for spec in program.graph_signature.input_specs
                   if spec.kind == InputKind.USER_INPUT}
    placeholders = [node for node in program.graph.nodes
                    if node.op == "placeholder" and node.name in user_inputs]
    parameters = list(model.get_parameters())
    tensors = [node for node in placeholders if isinstance(node.meta.get("val"), torch.Tensor)]
    if len(placeholders) != len(parameters) and len(tensors) == len(parameters):
        placeholders = tensors  # the frontend made no Parameter for the constant inputs
    if len(placeholders) == len(parameters):
        for node, parameter in zip(placeholders, parameters, strict=True):
            if isinstance(node.meta.get("val"), torch.Tensor):
                _name(parameter, node.name)
            elif not parameter.output(0).get_target_inputs():
                model.remove_parameter(parameter)
        model.validate_nodes_and_infer_types()
        return model
    return _restore_dropped_inputs(model, placeholders)


def _restore_dropped_inputs(model: ov.Model, placeholders: list[torch.fx.Node]) -> ov.Model:
    by_name = {parameter.friendly_name: parameter for parameter in model.get_parameters()}
    ordered, restored = [], []
    for node in placeholders:
        value = node.meta.get("val")
        parameter = by_name.pop(node.name, None)
        if not isinstance(value, torch.Tensor):
            if parameter is not None and parameter.output(0).get_target_inputs():
                ordered.append(parameter)
            continue
        if parameter is None:
            parameter = ops.parameter(_partial_shape(value),
                                      openvino_frontend.element_type(value.dtype))
            restored.append(node.name)
        _name(parameter, node.name)
        ordered.append(parameter)
    if by_name:  # a Parameter named unlike every input: not the pairing assumed here
        return model
    rebuilt = ov.Model(model.get_results(), ordered, model.friendly_name)
    rebuilt.set_rt_info(",".join(restored), UNUSED_INPUTS_KEY)
    rebuilt.validate_nodes_and_infer_types()
    return rebuilt


def unused_inputs(model: ov.Model) -> list[str]:
    """The program inputs `to_openvino` kept as unused Parameters (the frontend dropped them)."""
    if not model.has_rt_info(UNUSED_INPUTS_KEY):
        return []
    return [name for name in model.get_rt_info(UNUSED_INPUTS_KEY).astype(str).split(",") if name]


def _name(parameter: Any, name: str) -> None:
    parameter.set_friendly_name(name)
    parameter.output(0).set_names({name})


def _partial_shape(value: torch.Tensor) -> ov.PartialShape:
    """The example's size where it is fixed, dynamic where the program keeps it symbolic."""
    return ov.PartialShape([size if isinstance(size, int) else -1 for size in value.shape])


def save_openvino(model: ov.Model, directory: str | os.PathLike) -> Path:
    """Write `model` as `directory/model.xml` + `.bin`, weights kept in f32 (OpenVINO's
    default would compress them to f16, which verification at f32 must not see)."""
    xml = Path(directory) / "model.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, xml, compress_to_fp16=False)
    return xml
