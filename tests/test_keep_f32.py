"""Layers kept in f32 under bf16 (on the CPU: every other layer typed bf16 in the IR, compiled
with the f32 hint) and f16 (DisablePrecisionConversion marks in the IR) and left out of int8
quantisation: chosen by FILE:LINE, found in the IR by the names OpenVINO's PyTorch frontend
gives them, checked in the compiled model's runtime graph."""

import inspect
import xml.etree.ElementTree as ET

import numpy as np
import openvino as ov
import openvino.opset15 as ops
import pytest
import torch
from torch import nn

from dynexport.backends.openvino import save_openvino, to_openvino
from dynexport.inputs import Inputs
from dynexport.precision import apply_precision
from dynexport.precision.explicit import TO_BF16, explicit_bf16, f32_results
from dynexport.precision.keep_f32 import (
    MARK,
    fx_nodes_at,
    layers_of,
    mark_keep_f32,
    runtime_precisions,
)
from dynexport.precision.quantize import quantized_layers

CELLS = 16


class Geometry(nn.Module):
    """FlashOcc's camera geometry in small: points moved by a matrix, scaled to BEV cells,
    floored to integer cells that pick features for a convolution."""

    def __init__(self):
        super().__init__()
        self.lift = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, points, rotation, images):
        moved = points @ rotation  # MOVED
        scaled = (moved + torch.tensor([8.0, 8.0, 0.0])) * 0.5 / 0.25
        cells = torch.floor(scaled).to(torch.int64)  # CELLS
        flat = cells[:, 0].clamp(0, CELLS - 1) * CELLS + cells[:, 1].clamp(0, CELLS - 1)
        picked = self.lift(images).flatten(2).index_select(2, flat)
        return self.head(picked.view(1, 8, CELLS, -1))  # HEAD


def _line(marker: str) -> str:
    """FILE:LINE of the line of Geometry.forward that ends with `# marker`."""
    lines, first = inspect.getsourcelines(Geometry.forward)
    number = next(first + i for i, text in enumerate(lines) if text.rstrip().endswith(marker))
    return f"{__file__}:{number}"


def _inputs(seed: int) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    angle = torch.tensor(0.3)
    rotation = torch.tensor([[angle.cos(), -angle.sin(), 0.0], [angle.sin(), angle.cos(), 0.0],
                             [0.0, 0.0, 1.0]])
    return Inputs((torch.rand(256, 3, generator=generator) * 30 - 15, rotation,
                   torch.randn(1, 3, CELLS, CELLS, generator=generator)))


@pytest.fixture(scope="module")
def program():
    torch.manual_seed(0)
    return torch.export.export(Geometry().eval(), _inputs(0).args)


@pytest.fixture(scope="module")
def f32_xml(program, tmp_path_factory):
    model = to_openvino(program)
    # Static shapes: the CPU plugin refuses this MatMul + bias under bf16 with dynamic ones
    # ("dnnl_postops_composer ... data size: 3 OC: 0", OpenVINO 2026.4).
    model.reshape({model.inputs[i]: list(t.shape) for i, t in enumerate(_inputs(0).tensors())})
    return save_openvino(model, tmp_path_factory.mktemp("f32") / "openvino")


@pytest.fixture(scope="module")
def cell_layers(program, f32_xml):
    """The layers made at the CELLS line: the floor and the float → integer Convert."""
    names = fx_nodes_at(program, [_line("# CELLS")])[_line("# CELLS")]
    layers, unmatched = layers_of(f32_xml, names)
    assert not unmatched and {layer.split("/")[-1] for layer in layers} >= {"Floor", "Convert"}
    return layers


def test_fx_nodes_at_finds_a_line_by_its_path_or_its_tail(program):
    line = _line("# CELLS")
    names = fx_nodes_at(program, [line])[line]
    assert names and all(not name.startswith(("mm", "convolution")) for name in names)
    tail = "tests/test_keep_f32.py:" + line.rpartition(":")[2]
    assert fx_nodes_at(program, [tail])[tail] == names
    assert fx_nodes_at(program, [tail.replace("keep", "kept")])[tail.replace("keep", "kept")] == []
    with pytest.raises(ValueError, match="FILE:LINE"):
        fx_nodes_at(program, ["test_keep_f32.py"])


def test_frontend_names_layers_after_fx_nodes(program, f32_xml):
    """OpenVINO 2026.4's frontend names a layer "<fx node>/<aten op>/<op>", its result
    "<fx node>:0"; the fx node is one of the converted program's."""
    model = ov.Core().read_model(f32_xml)
    floor = next(op for op in model.get_ops() if op.get_type_name() == "Floor")
    fx_name = floor.get_friendly_name().split("/")[0]
    line = _line("# CELLS")
    assert fx_name in fx_nodes_at(program, [line])[line]
    assert floor.get_friendly_name() == f"{fx_name}/aten.floor.default/Floor"
    assert f"{fx_name}:0" in floor.output(0).get_names()
    assert layers_of(f32_xml, [fx_name, "no_such_node"]) == (
        [floor.get_friendly_name()], ["no_such_node"])


def test_marks_are_in_the_ir_and_survive_read_and_save(f32_xml, cell_layers, tmp_path):
    marked = mark_keep_f32(f32_xml, tmp_path / "marked" / "model.xml", cell_layers)
    model = ov.Core().read_model(marked)
    carrying = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops()
                if "DisablePrecisionConversion_0" in op.get_rt_info().keys()}
    assert set(carrying) == set(cell_layers)
    # The constants a kept layer reads are marked too (f16 would round them): the 0.25 here.
    scaled = mark_keep_f32(f32_xml, tmp_path / "scaled" / "model.xml",
                           [op.get_friendly_name() for op in model.get_ops()
                            if op.get_type_name() == "Divide"])
    assert {op.get_type_name() for op in ov.Core().read_model(scaled).get_ops()
            if "DisablePrecisionConversion_0" in op.get_rt_info().keys()} == {"Divide", "Constant"}
    ov.save_model(model, tmp_path / "again.xml", compress_to_fp16=False)
    saved = {layer.get("name"): [a.attrib for a in layer.iter("attribute")]
             for layer in ET.parse(tmp_path / "again.xml").getroot().iter("layer")}
    assert all(saved[name] == [MARK] for name in cell_layers)
    unmarked = ov.Core().read_model(f32_xml)
    assert not any("DisablePrecisionConversion_0" in op.get_rt_info().keys()
                   for op in unmarked.get_ops())


def _compiled(xml, hint: str):
    compiled = ov.Core().compile_model(ov.Core().read_model(xml), "CPU",
                                       {"INFERENCE_PRECISION_HINT": hint})
    computed = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if hint == "bf16" and "bfloat16" not in computed:
        pytest.skip(f"this CPU plugin computes the bf16 hint in {computed}")
    return compiled


def test_bf16_runtime_graph_runs_marked_layers_in_f32(f32_xml, cell_layers, tmp_path):
    marked = mark_keep_f32(f32_xml, tmp_path / "model.xml", cell_layers)
    # Without the mark the floor and the Convert run in bf16: they feed a convolution, so they
    # are not in the graph's tail, which the CPU plugin keeps in f32 on its own.
    assert runtime_precisions(_compiled(f32_xml, "bf16"), cell_layers) == dict.fromkeys(
        cell_layers, "bf16")
    assert runtime_precisions(_compiled(marked, "bf16"), cell_layers) == dict.fromkeys(
        cell_layers, "f32")


def test_bf16_on_the_cpu_loses_the_mark_of_a_layer_its_passes_rebuild(program, f32_xml,
                                                                      tmp_path):
    """OpenVINO 2026.4's CPU plugin folds `(points @ rotation + c) * 0.5 / 0.25` into a new
    MatMul (MatMulMultiplyFusion and friends), which has neither the mark (not copyable) nor
    the layer's name: it runs in bf16, and runtime_precisions does not claim the layer f32.
    docs/devices.md describes this; if an OpenVINO upgrade keeps the mark, update both."""
    moved = fx_nodes_at(program, [_line("# MOVED")])[_line("# MOVED")]
    matmul, _ = layers_of(f32_xml, moved)
    compiled = _compiled(mark_keep_f32(f32_xml, tmp_path / "model.xml", matmul), "bf16")
    assert runtime_precisions(compiled, matmul).get(matmul[0]) != "f32"
    assert any(op.get_rt_info()["layerType"].astype(str) == "MatMul"
               and op.get_rt_info()["runtimePrecision"].astype(str) == "bf16"
               for op in compiled.get_runtime_model().get_ops())


def test_f16_runtime_graph_runs_marked_layers_in_f32(f32_xml, cell_layers, tmp_path):
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "FP16" not in capabilities:
        pytest.skip("OpenVINO lists no FP16 among this CPU's OPTIMIZATION_CAPABILITIES "
                    f"({', '.join(capabilities)}; a CPU gets it with avx512_fp16): the f16 hint "
                    "computes in f32 here")
    marked = mark_keep_f32(f32_xml, tmp_path / "model.xml", cell_layers)
    compiled = _compiled(f32_xml, "f16")
    assert "float16" in str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    assert runtime_precisions(compiled, cell_layers) == dict.fromkeys(cell_layers, "f16")
    assert runtime_precisions(_compiled(marked, "f16"), cell_layers) == dict.fromkeys(
        cell_layers, "f32")


def _runtime(compiled) -> list[tuple[str, str, set[str]]]:
    """The compiled model's executed nodes: type, precision, the IR layers each runs."""
    return [(info["layerType"].astype(str), info["runtimePrecision"].astype(str),
             set(info["originalLayersNames"].astype(str).split(",")))
            for info in (op.get_rt_info() for op in compiled.get_runtime_model().get_ops())]


def test_bf16_types_keep_a_rebuilt_matmul_in_f32(program, f32_xml, tmp_path):
    """What the mark could not do above: with every other layer typed bf16 and the f32 hint,
    the MatMul the plugin rebuilds keeps f32, the convolutions compute in bf16."""
    _compiled(f32_xml, "bf16")  # skips where the plugin computes the bf16 hint in f32
    line = _line("# MOVED")
    matmul, _ = layers_of(f32_xml, fx_nodes_at(program, [line])[line])
    typed, bf16_layers = explicit_bf16(f32_xml, tmp_path / "model.xml", matmul)
    compiled = _compiled(typed, "f32")
    ran = _runtime(compiled)
    assert {p for kind, p, _ in ran if kind in ("MatMul", "FullyConnected")} == {"f32"}
    assert {p for kind, p, _ in ran if kind == "Convolution"} == {"bf16"}
    assert bf16_layers >= 2
    # The weights are rounded to nearest even here, not by OpenVINO's coarser folding.
    constants = {op.get_friendly_name(): op for op in ov.Core().read_model(typed).get_ops()
                 if op.get_type_name() == "Constant"}
    weights = next(op for op in ov.Core().read_model(f32_xml).get_ordered_ops()
                   if op.get_type_name() == "Convolution").input_value(1).get_node()
    bits = weights.get_data().view(np.uint32).astype(np.uint64)
    nearest = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    stored = constants[weights.get_friendly_name() + "/bf16"].get_data().view(np.uint16)
    assert np.array_equal(stored, nearest) and not np.array_equal(stored, bits >> 16)
    # Results stay f32 and keep their names (OpenVINO hands bf16 to numpy as float16 bits).
    model = ov.Core().read_model(typed)
    assert [(o.get_names(), o.get_element_type()) for o in model.outputs] == [
        (o.get_names(), o.get_element_type()) for o in ov.Core().read_model(f32_xml).outputs]


def test_a_kept_layer_fused_with_its_hand_over_to_bf16_counts_as_f32(tmp_path):
    """The CPU plugin fuses kept elementwise layers and the Convert to bf16 that feeds a bf16
    convolution into one snippet, whose output is bf16: it computed in f32."""
    images = ops.parameter([1, 8, 16, 16], ov.Type.f32, name="images")
    kept = ops.sigmoid(ops.add(ops.multiply(ops.relu(images), ops.relu(images)),
                               ops.constant(np.float32(1.0))))
    kept.set_friendly_name("kept")
    conv = ops.convolution(kept, ops.constant(np.ones((8, 8, 3, 3), np.float32)), [1, 1],
                           [1, 1], [1, 1], [1, 1])
    xml = tmp_path / "f32.xml"
    ov.save_model(ov.Model([conv], [images]), xml, compress_to_fp16=False)
    _compiled(xml, "bf16")
    compiled = _compiled(explicit_bf16(xml, tmp_path / "typed.xml", ["kept"])[0], "f32")
    node = next(info for info in (op.get_rt_info()
                                  for op in compiled.get_runtime_model().get_ops())
                if "kept" in info["originalLayersNames"].astype(str).split(","))
    # The premise (OpenVINO 2026.4): one node runs both and hands its result over in bf16.
    assert "kept" + TO_BF16 in node["originalLayersNames"].astype(str).split(",")
    assert (node["runtimePrecision"].astype(str), node["outputPrecisions"].astype(str)) == (
        "f32", "bf16")
    assert runtime_precisions(compiled, ["kept"]) == {"kept": "f32"}


def test_f32_results_reads_an_added_bf16_output_as_its_values(f32_xml, tmp_path):
    _compiled(f32_xml, "bf16")
    typed, _ = explicit_bf16(f32_xml, tmp_path / "model.xml", [])
    name = next(port.get_any_name() for op in ov.Core().read_model(typed).get_ordered_ops()
                for port in op.outputs()
                if port.get_element_type() == ov.Type.bf16 and port.get_names())
    feeds = [t.numpy() for t in _inputs(0).tensors()]
    values = {}
    for path, fix in ((f32_xml, False), (typed, False), (typed, True)):
        model = ov.Core().read_model(path)
        model.add_outputs([name])
        if fix:
            f32_results(model)
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        values[path, fix] = compiled.create_infer_request().infer(feeds)[compiled.output(name)]
    if values[typed, False].dtype != np.float16:
        pytest.skip("this OpenVINO reads a bf16 output as "
                    f"{values[typed, False].dtype}, no longer float16 bits")
    reference = values[f32_xml, False]
    assert np.abs(values[typed, True] - reference).max() < 0.1
    assert np.abs(values[typed, False].astype(np.float32) - reference).max() > 0.5


def test_apply_precision_bf16_ships_the_typed_ir(program, f32_xml, cell_layers, tmp_path):
    line = _line("# CELLS")
    result = apply_precision("bf16", f32_xml, tmp_path, {"example": _inputs(0)}, [],
                             runs=1, keep_f32=fx_nodes_at(program, [line])[line])
    assert result.artifact == str(tmp_path / "openvino_bf16" / "model.xml")
    # What the IR needs (serving reads it): its types say bf16, the hint must not add more.
    assert result.openvino_config == {"INFERENCE_PRECISION_HINT": "f32"}
    kept = result.kept_f32
    assert kept.explicit and kept.chosen == cell_layers and kept.unmatched == []
    # The index math finder sees the same geometry: floor, Convert and what feeds them.
    assert set(cell_layers) <= set(kept.index_math)
    if result.inference_precision == "bf16":
        assert not set(kept.reduced + kept.unseen) & set(cell_layers)
    assert "INFERENCE_PRECISION_HINT=f32" in result.note
    assert "kept in f32 under bf16 by their element types" in result.remarks()
    assert "kept_f32" not in result.to_json()


class Clusters(nn.Module):
    """examples/divergence/clusters.py: squared distances to 64 centres expanded, so that the
    point-centre products, thousands in size, lose whole units in bf16 and the argmin moves."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.centres = nn.Parameter(torch.rand(64, 3, generator=generator) * 80 - 40)
        self.embed = nn.Linear(3, 16)

    def forward(self, points):
        p2 = (points * points).sum(-1, keepdim=True)
        c2 = (self.centres * self.centres).sum(-1)
        d2 = p2 - 2 * points @ self.centres.T + c2  # DISTANCES
        feats = torch.relu(self.embed(points / 40))  # EMBED
        return d2.argmin(-1), feats.softmax(-1)


def test_keep_f32_of_the_distances_restores_the_labels_under_bf16(tmp_path):
    torch.manual_seed(0)
    points = Inputs((torch.rand(2048, 3, generator=torch.Generator().manual_seed(1)) * 80 - 40,))
    program = torch.export.export(Clusters().eval(), points.args)
    f32_xml = save_openvino(to_openvino(program), tmp_path / "f32")
    _compiled(f32_xml, "bf16")
    lines = inspect.getsourcelines(Clusters.forward)

    def nodes(marker: str) -> list[str]:
        number = next(lines[1] + i for i, text in enumerate(lines[0])
                      if text.rstrip().endswith(marker))
        return fx_nodes_at(program, [f"{__file__}:{number}"])[f"{__file__}:{number}"]

    def labels_agree(result) -> float:
        return next(c.label_agreement for c in result.comparisons if c.output == "labels")

    plain, kept = (apply_precision("bf16", f32_xml, tmp_path / name, {"example": points}, [],
                                   ["labels", "feats"], runs=1, keep_f32=keep)
                   for name, keep in (("plain", ()), ("kept", nodes("# DISTANCES"))))
    assert plain.artifact is None and plain.openvino_config == {"INFERENCE_PRECISION_HINT": "bf16"}
    assert labels_agree(plain) < 0.99  # 97.5 % with OpenVINO 2026.4.1 on an AVX-512 Xeon
    assert labels_agree(kept) > labels_agree(plain) and labels_agree(kept) >= 0.999
    assert kept.inference_precision == "bf16" and kept.kept_f32.reduced == []
    compiled = ov.Core().compile_model(kept.artifact, "CPU", kept.openvino_config)
    embed, _ = layers_of(f32_xml, nodes("# EMBED"))
    matmuls = [(p, names) for kind, p, names in _runtime(compiled)
               if kind in ("MatMul", "FullyConnected")]
    # The embedding still computes in bf16; the distances' product, rebuilt by the plugin
    # under another name, in f32.
    assert sorted(p for p, names in matmuls if names & set(embed)) == ["bf16"]
    assert sorted(p for p, names in matmuls if not names & set(embed)) == ["f32"]


def test_int8_leaves_the_chosen_convolution_unquantized(program, f32_xml, tmp_path):
    pytest.importorskip("nncf")
    line = _line("# HEAD")
    head = fx_nodes_at(program, [line])[line]
    result = apply_precision("int8", f32_xml, tmp_path, {"example": _inputs(0)},
                             [_inputs(seed) for seed in range(1, 5)], runs=1, keep_f32=head)
    convolutions, _ = layers_of(f32_xml, head)
    head_conv = [name for name in convolutions if name.endswith("/Convolution")]
    assert head_conv and set(head_conv) <= set(result.not_quantized)
    assert result.kept_f32.chosen == convolutions and result.kept_f32.reduced == []
    quantized = quantized_layers(ov.Core().read_model(result.artifact))
    assert not set(head_conv) & quantized
    # NNCF quantises the other convolution: leaving the head out is the IgnoredScope's doing.
    assert any(name.endswith("/Convolution") for name in quantized)
    assert np.isfinite([c.max_abs_diff for c in result.comparisons]).all()
