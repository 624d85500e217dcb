"""Layers kept in f32 under OpenVINO's bf16 and f16 inference-precision hints: the index math
and the layers made from the fx nodes the user names (`--keep-f32 FILE:LINE`), marked in a
copy of the f32 IR with the runtime attribute OpenVINO's own mixed precision uses (bf16 on the
CPU types them instead: explicit.py), and checked afterwards in the compiled model's runtime
graph (what each plugin does with the mark: the package's docstring and docs/devices.md)."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from torch.export import ExportedProgram

from dynexport.adapters import openvino_frontend
from dynexport.adapters.openvino_frontend import decoder_graph_module
from dynexport.custom_ops.registry import OpRegistry, resolve
from dynexport.hazards.location import location_from_stack_trace
from dynexport.precision.explicit import TO_BF16
from dynexport.precision.index_math import FLOATS, IRGraph

# ov::DisablePrecisionConversion (transformations/rt_info/disable_precision_conversion.hpp),
# from any type to bf16 and to f16, as OpenVINO serialises it. Python can set only string
# rt_info, which save_model drops and compile_model rejects ("Bad as from std::string to
# ov::DisablePrecisionConversion"); written into model.xml, read_model restores the attribute.
MARK = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:bf16,f16"}
_REDUCED = {"bf16", "f16"}


def parse_location(text: str) -> tuple[str, int]:
    """`--keep-f32`'s FILE:LINE as (file, line); ValueError saying the form otherwise."""
    file, _, line = text.rpartition(":")
    if not file or not line.isdigit():
        raise ValueError(f"{text!r} is not FILE:LINE (e.g. model.py:42)")
    return file, int(line)


def fx_nodes_at(program: ExportedProgram, locations: Sequence[str],
                registry: OpRegistry | None = None) -> dict[str, list[str]]:
    """For each FILE:LINE of `locations`, the fx nodes made at that line of user code (the
    line dynexport's report shows for an op, hazards.location), in the program OpenVINO's
    PyTorch frontend converts (`registry`'s decomposition of `program`), whose names its
    layers carry. FILE may be any tail of the path, or relative to the working directory."""
    wanted = {location: parse_location(location) for location in locations}
    graph = decoder_graph_module(resolve(registry).openvino_decoder_input(program)).graph
    found: dict[str, list[str]] = {location: [] for location in locations}
    for node in graph.nodes:
        # Without users a node makes no layer (an _assert_tensor_metadata, a dead value).
        line = (location_from_stack_trace(node.meta.get("stack_trace"))
                if node.op == "call_function" and node.users else None)
        for location, (file, number) in wanted.items():
            if line is not None and line.line == number and _same_file(line.file, file):
                found[location].append(node.name)
    return found


def _same_file(traced: str, given: str) -> bool:
    parts = Path(given).parts
    return (os.path.realpath(traced) == os.path.realpath(given)
            or Path(traced).parts[-len(parts):] == parts)


def layers_of(xml: str | os.PathLike, fx_names: Iterable[str]) -> tuple[list[str], list[str]]:
    """The layers of `xml` made from the fx nodes `fx_names` (OpenVINO's PyTorch frontend names
    them "<fx node>/<aten op>/<op>" and the last one's result "<fx node>:0"), and the fx nodes
    no layer comes from: folded, or merged into another layer (a convolution into the batch
    norm after it takes the batch norm's name)."""
    wanted = dict.fromkeys(fx_names)
    layers, matched = [], set()
    for layer in IRGraph(ET.parse(Path(xml)).getroot()).layers.values():
        if layer.type in ("Const", "Parameter", "Result"):
            continue
        sources = {openvino_frontend.fx_node_of_layer(layer.name)} | {
            openvino_frontend.fx_node_of_tensor(name) for name in layer.tensors} - {None}
        if hit := sources.intersection(wanted):
            layers.append(layer.name)
            matched |= hit
    return layers, [name for name in wanted if name not in matched]


def mark_keep_f32(f32_xml: str | os.PathLike, target: str | os.PathLike,
                  layers: Collection[str]) -> Path:
    """A copy of the IR `f32_xml` at `target` (and its .bin beside it) in which `layers`, and
    the constants and inputs they read, carry MARK. The constants and inputs too: under f16,
    ConvertPrecision converts an unmarked constant (and puts a Convert after an unmarked
    input) for every consumer, rounding what the kept layer reads."""
    source, target = Path(f32_xml), Path(target)
    tree = ET.parse(source)
    ir = IRGraph(tree.getroot())
    chosen = {i for i, layer in ir.layers.items() if layer.name in layers}
    for i in list(chosen):
        for port, precision in ir.layers[i].inputs.items():
            producer = ir.producer.get((i, port))
            if (producer is not None and precision in FLOATS
                    and ir.layers[producer[0]].type in ("Const", "Parameter")):
                chosen.add(producer[0])
    for element in tree.getroot().iter("layer"):
        if element.get("id") in chosen:
            _mark(element)
    target.parent.mkdir(parents=True, exist_ok=True)
    tree.write(target, encoding="utf-8", xml_declaration=True)
    shutil.copyfile(source.with_suffix(".bin"), target.with_suffix(".bin"))
    return target


def _mark(layer: ET.Element) -> None:
    rt_info = layer.find("rt_info")
    if rt_info is None:
        rt_info = ET.Element("rt_info")
        layer.insert(0, rt_info)
    for attribute in rt_info.findall("attribute"):
        if attribute.get("name") == MARK["name"]:  # OpenVINO's own, f16 only: ours covers it
            rt_info.remove(attribute)
    ET.SubElement(rt_info, "attribute", MARK)


def runtime_precisions(compiled: Any, layers: Collection[str]) -> dict[str, str] | None:
    """For each of `layers` that the runtime graph of `compiled` (an openvino.CompiledModel)
    names, "bf16" or "f16" where an executed node running it computes or hands on its result
    in that type, else "f32". The runtime graph lists for each executed node the layers it runs
    (originalLayersNames) and its precisions. A layer it does not name was folded when
    compiling, or rebuilt under another name (its precision is unknown). None where the
    device's runtime graph has no precisions. A node that also runs a Convert to bf16 of the
    typed IR (explicit.py) hands its result over in bf16 to bf16 layers: only what it computes
    in counts."""
    found: dict[str, str] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "runtimePrecision" not in info.keys():
            return None
        ran = set(info["originalLayersNames"].astype(str).split(","))
        precisions = {info["runtimePrecision"].astype(str)}
        if not any(name.endswith(TO_BF16) for name in ran):
            precisions.update(info["outputPrecisions"].astype(str).split(","))
        reduced = sorted(precisions & _REDUCED)
        for name in ran.intersection(layers):
            if reduced or name not in found:
                found[name] = reduced[0] if reduced else "f32"
    return found
