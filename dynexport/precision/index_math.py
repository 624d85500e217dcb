"""Index math in an OpenVINO IR: the floating-point layers upstream of a float → integer
step, which int8 quantisation must skip (see the package's docstring)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

FLOATS = {"FP32", "FP16", "BF16", "FP64"}
# Learned layers: the bulk of the arithmetic, which reduced precision is meant for. The walk
# from an index stops there; their inputs are features, not coordinates.
_LEARNED = {"Convolution", "GroupConvolution", "ConvolutionBackpropData",
            "GroupConvolutionBackpropData"}
# Integer results that only pass through these on their way to a Result are labels (an
# argmax output), not indices.
_PASS_THROUGH = {"Convert", "Squeeze", "Unsqueeze", "Reshape", "Transpose"}


@dataclass
class _Layer:
    type: str
    name: str
    inputs: dict[str, str]  # port id → precision
    outputs: dict[str, str]
    tensors: list[str]  # the names of its output tensors


class IRGraph:
    """model.xml (its parsed root element) as a graph of layers and port-to-port edges."""

    def __init__(self, root: ET.Element):
        self.layers: dict[str, _Layer] = {}
        for element in root.iter("layer"):
            ports, tensors = {}, []
            for kind in ("input", "output"):
                block = element.find(kind)
                ports[kind] = {} if block is None else {
                    port.get("id"): port.get("precision", "") for port in block.findall("port")}
            for port in element.findall("output/port"):
                tensors += [name for name in port.get("names", "").split(",") if name]
            self.layers[element.get("id")] = _Layer(element.get("type"), element.get("name"),
                                                    ports["input"], ports["output"], tensors)
        self.producer: dict[tuple[str, str], tuple[str, str]] = {}
        self.consumers: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for edge in root.iter("edge"):
            source = (edge.get("from-layer"), edge.get("from-port"))
            target = (edge.get("to-layer"), edge.get("to-port"))
            self.producer[target] = source
            self.consumers.setdefault(source, []).append(target)

    def is_weight(self, layer_id: str, port: str) -> bool:
        """Whether an input is a constant, possibly decompressed or fake-quantized."""
        source = self.producer.get((layer_id, port))
        while source is not None:
            layer = self.layers[source[0]]
            if layer.type == "Const":
                return True
            if layer.type not in ("Convert", "FakeQuantize"):
                return False
            source = self.producer.get((source[0], next(iter(layer.inputs))))
        return False

    def is_learned(self, layer_id: str) -> bool:
        layer = self.layers[layer_id]
        return layer.type in _LEARNED or (layer.type == "MatMul" and self.is_weight(layer_id, "1"))

    def used_as_integer(self, layer_id: str, port: str) -> bool:
        """Whether an integer output feeds anything but a Result (through pass-through ops)."""
        pending, seen = [(layer_id, port)], set()
        while pending:
            source = pending.pop()
            for target_layer, _ in self.consumers.get(source, []):
                layer = self.layers[target_layer]
                if layer.type == "Result" or target_layer in seen:
                    continue
                if layer.type not in _PASS_THROUGH or any(
                        p in FLOATS for p in layer.outputs.values()):
                    return True
                seen.add(target_layer)
                pending += [(target_layer, p) for p in layer.outputs]
        return False

    def index_math(self) -> list[str]:
        """Ids of the float layers whose results become integers used inside the graph."""
        boundaries = [
            layer_id for layer_id, layer in self.layers.items()
            if layer.type not in ("Const", "Parameter", "ShapeOf")
            and any(p in FLOATS for p in layer.inputs.values())
            and any(p not in FLOATS and p != "BOOL" and self.used_as_integer(layer_id, port)
                    for port, p in layer.outputs.items())]
        found: dict[str, None] = {}
        pending = list(boundaries)
        while pending:
            layer_id = pending.pop()
            if layer_id in found:
                continue
            found[layer_id] = None
            for port, precision in self.layers[layer_id].inputs.items():
                source = self.producer.get((layer_id, port))
                if precision not in FLOATS or source is None:
                    continue
                producer = self.layers[source[0]]
                if producer.type == "Parameter" or self.is_learned(source[0]):
                    continue
                if producer.type != "Const":
                    pending.append(source[0])
        return list(found)


def index_math_layers(xml: str | os.PathLike) -> list[str]:
    """Names of the layers of `xml` that compute values later used as integers (indices,
    sizes) inside the graph: floating-point layers upstream of a float → integer step whose
    result is not only a model output (labels are), stopping at learned layers
    (convolutions, matrix products with constant weights) and at inputs."""
    ir = IRGraph(ET.parse(Path(xml)).getroot())
    return [ir.layers[i].name for i in ir.index_math()]
