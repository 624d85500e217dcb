"""bf16 written into the IR's element types: what keeps chosen layers in f32 under bf16 on the
CPU, whose plugin loses their DisablePrecisionConversion mark when its passes rebuild them
(docs/devices.md).

A copy of the f32 IR computes in bf16 wherever the bf16 hint would, except in the kept layers:
a Convert to bf16 goes before each f32 input of a bf16 layer, a Convert to f32 before each
bf16 input of an f32 layer or of a Result. It is compiled with INFERENCE_PRECISION_HINT=f32,
under which the CPU plugin changes no element type (Graph::EnforceInferencePrecision returns
at once), so the precision survives the passes that rebuild nodes."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

# The name of a Convert to bf16 ends so: the hand-over from an f32 layer to bf16 ones, which
# the CPU plugin may fuse into the f32 layer (keep_f32.runtime_precisions).
TO_BF16 = "/to_bf16"
# Where Graph::EnforceInferencePrecision's walk from the Results stops under the bf16 hint
# (Convolution, FullyConnected, MatMul, RNNs, ROIPooling, Interpolate, PagedAttention, as opset
# types): the layers it passes first are the graph's tail, which the hint leaves f32.
_BF16_STOPS = {"Convolution", "GroupConvolution", "MatMul", "ROIPooling", "Interpolate",
               "RNNCell", "GRUCell", "LSTMCell", "AUGRUCell", "RNNSequence", "GRUSequence",
               "LSTMSequence", "AUGRUSequence", "PagedAttentionExtension"}
# Left as they are: a Convert is a type change itself; ShapeOf reads no values.
_UNTOUCHED = {"Parameter", "Constant", "Result", "Convert", "ShapeOf"}
# Kept f32: Range's scalars are index arithmetic; a body (If, Loop, TensorIterator) declares
# its parameters' types, which bf16 inputs would no longer match.
_F32_LAYERS = {"Range", "If", "Loop", "TensorIterator"}
# Float inputs that are not data: Interpolate's scales.
_DATA_PORTS = {"Interpolate": (0,)}
# The hint keeps a port fed by a constant or an input in f32 (the same function: "Skip BF16
# enforcement for nodes after Constant Inputs", and Eltwise after an Input), but for these
# layers' weights and Concat; a layer whose data (input 0) is such a port computes in f32.
# FlashOcc's BEV grid, a ScatterNDUpdate into a constant of zeros, accumulates in f32 so; in
# bf16 its occupancy labels agree with f32 less (docs/devices.md).
_BF16_WITH_CONSTANTS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                        "GroupConvolutionBackpropData", "MatMul", "Concat"}


def graph_tail(model: Any) -> set[str]:
    """Names of the layers of `model` (an openvino.Model) that the CPU plugin keeps in f32
    under the bf16 hint without being asked: those reachable from a Result without crossing
    a layer of _BF16_STOPS (the plugin walks its own graph, in which some layers are fused;
    this walks the IR's)."""
    tail: set[str] = set()
    pending = [result.input_value(0).get_node() for result in model.get_results()]
    while pending:
        node = pending.pop()
        name = node.get_friendly_name()
        if node.get_type_name() in _BF16_STOPS or name in tail:
            continue
        tail.add(name)
        pending += [value.get_node() for value in node.input_values()]
    return tail


def _bf16_constant(data: np.ndarray) -> Any:
    """`data` as a bf16 Constant, rounded to nearest even. OpenVINO 2026.4 folds a Convert of a
    constant to bf16 with a coarser rounding, which on FlashOcc's weights costs occupancy
    labels against the bf16 hint (docs/devices.md)."""
    import openvino as ov

    bits = data.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # overflows for NaNs alone
    tensor = ov.Tensor(ov.Type.bf16, ov.Shape(list(data.shape)))
    # numpy has no bf16: OpenVINO shows the tensor as float16, whose bits are written here.
    tensor.data.view(np.uint16)[...] = np.where(np.isnan(data), 0x7FC0, rounded)
    return ov.op.Constant(tensor)


def _is_constant_or_input(value: Any) -> bool:
    """Whether `value` is a Parameter's or a Constant's, through Converts (the plugin folds a
    Convert of a constant)."""
    node = value.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() in ("Parameter", "Constant")


def explicit_bf16(f32_xml: str | os.PathLike, target: str | os.PathLike,
                  keep: Collection[str]) -> tuple[Path, int]:
    """A copy of the IR `f32_xml` at `target` whose layers compute in bf16 by their element
    types, except `keep` (layer names) and what the bf16 hint leaves f32 by itself (the
    graph's tail, layers whose data is a constant or an input; above), which stay f32. It is
    meant for INFERENCE_PRECISION_HINT=f32. Returns the path and how many layers compute in
    bf16."""
    import openvino as ov
    import openvino.opset15 as ops

    f32, bf16 = ov.Type.f32, ov.Type.bf16
    model = ov.Core().read_model(Path(f32_xml))
    f32_names = set(keep) | graph_tail(model)
    converts: dict[tuple[int, int, str], Any] = {}

    def as_type(value: Any, element_type: Any) -> Any:
        """`value` (an output) as `element_type`: one Convert, or bf16 Constant, per value and
        type."""
        key = (value.get_node().get_instance_id(), value.get_index(), str(element_type))
        if key in converts:
            return converts[key]
        if value.get_node().get_type_name() == "Constant" and element_type == bf16:
            constant = _bf16_constant(value.get_node().get_data())
            constant.set_friendly_name(f"{value.get_node().get_friendly_name()}/bf16")
            converts[key] = constant.output(0)
        else:
            convert = ops.convert(value, element_type)
            port = f".{value.get_index()}" if value.get_index() else ""
            convert.set_friendly_name(value.get_node().get_friendly_name() + port
                                      + (TO_BF16 if element_type == bf16 else "/to_f32"))
            converts[key] = convert.output(0)
        return converts[key]

    reduced = 0
    for node in model.get_ordered_ops():  # inputs before the layers that read them
        kind = node.get_type_name()
        if kind in ("Parameter", "Constant"):
            continue
        if kind not in _UNTOUCHED:
            ports = [port for port in _DATA_PORTS.get(kind, range(node.get_input_size()))
                     if node.input_value(port).get_element_type().is_real()]
            types = {node.input_value(port).get_element_type() for port in ports}
            wanted = f32 if (
                kind in _F32_LAYERS or node.get_friendly_name() in f32_names
                or not types <= {f32, bf16}  # f64 or f16 arithmetic: not ours to lower
                or kind not in _BF16_WITH_CONSTANTS and 0 in ports
                and _is_constant_or_input(node.input_value(0))) else bf16
            for port in ports:
                value = node.input_value(port)
                if value.get_element_type() in (f32, bf16) and value.get_element_type() != wanted:
                    node.input(port).replace_source_output(as_type(value, wanted))
        # Every layer, so that the types changed above reach the layers below.
        node.validate_and_infer_types()
        reduced += kind not in _UNTOUCHED and any(
            output.get_element_type() == bf16 for output in node.outputs())
    f32_results(model)
    model.validate_nodes_and_infer_types()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, target, compress_to_fp16=False)
    return target, reduced


def f32_results(model: Any) -> None:
    """Put a Convert to f32 before each Result of `model` (an openvino.Model) that reads bf16,
    the output's names moved to it: OpenVINO's Python API (2026.4) hands a bf16 output to
    numpy as float16, its bits misread. For a model that adds outputs to the typed IR, too."""
    import openvino as ov
    import openvino.opset15 as ops

    for result in model.get_results():
        value = result.input_value(0)
        if value.get_element_type() == ov.Type.bf16:
            convert = ops.convert(value, ov.Type.f32)
            convert.set_friendly_name(f"{value.get_node().get_friendly_name()}/to_f32")
            convert.output(0).set_names(value.get_names())
            value.set_names(set())
            result.input(0).replace_source_output(convert.output(0))
            result.validate_and_infer_types()


def computes_bf16(compiled: Any) -> bool:
    """Whether any executed node of `compiled` (an openvino.CompiledModel) computes in bf16. A
    CPU without bf16 support converts the IR's bf16 types to f32 (the CPU plugin's
    transformation_pipeline.cpp: bf16 → f32 where !hasHardwareSupport(bf16))."""
    return any(op.get_rt_info()["runtimePrecision"].astype(str) == "bf16"
               for op in compiled.get_runtime_model().get_ops()
               if "runtimePrecision" in op.get_rt_info().keys())
