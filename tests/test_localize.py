"""Localisation (contract §7): a converted model that leaves the program's values is traced to
the op responsible, at the line of the user's code that calls it, with its cause told apart
from evidence: a translation that computes something else (`lowering`), a kernel that races
(`nondeterminism`), a reduced precision (`precision`)."""

import importlib.util
import sys
from pathlib import Path

import openvino as ov
import pytest
import torch
from helpers import REPO, read_report

import dynexport
from dynexport.localization import localize

EXAMPLES = REPO / "examples" / "divergence"


def _example(name: str):
    """The example module, loaded once per process (it registers its op with torch)."""
    key = f"divergence_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


# A racing translation on scatters small enough that onnxruntime runs them on one thread: the
# race cannot show in this run, only the graph tells.
SMALL_RACY_SCRIPT = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import torch
from test_localize import _example

example = _example("scatter_translation")
get_model = example.get_model
dynamic_shapes = example.dynamic_shapes

def get_inputs():
    return (torch.rand(64, 2, generator=torch.Generator().manual_seed(1)),)

def get_probe_inputs():
    return (torch.rand(50, 2, generator=torch.Generator().manual_seed(2)),)
"""


def _line_of(name: str, text: str) -> int:
    lines = (EXAMPLES / f"{name}.py").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


@pytest.fixture(scope="module")
def wrong_axis(tmp_path_factory):
    """The model whose custom op's ONNX translation normalises over the wrong axis, exported
    and converted with dynexport's own functions."""
    module = _example("wrong_axis_translation")
    inputs = module.get_inputs()
    program = dynexport.export(module.get_model(), inputs)
    folder = tmp_path_factory.mktemp("wrong_axis")
    onnx_path = dynexport.to_onnx(program, folder / "model.onnx")
    ov.save_model(dynexport.to_openvino(program), folder / "model.xml", compress_to_fp16=False)
    return program, inputs, onnx_path, folder / "model.xml"


def test_a_wrong_user_translation_is_the_lowering_culprit_at_its_calling_line(wrong_axis):
    program, inputs, onnx_path, _ = wrong_axis
    [entry] = localize(program, onnx_path, inputs).entries
    assert entry.cause == "lowering" and entry.runtime == "onnxruntime"
    [culprit] = entry.culprits
    assert culprit.op == "divergence_demo.l1_normalize.default"
    assert culprit.translation == "user"
    assert culprit.translated_by.endswith("l1_normalize_onnx")
    assert culprit.location.file.endswith("wrong_axis_translation.py")
    assert culprit.location.line == _line_of("wrong_axis_translation",
                                             "shares = torch.ops.divergence_demo")
    assert culprit.input_max_abs_diff == 0.0 and culprit.max_abs_diff > 0.05
    assert "l1_normalize_onnx" in entry.fix


def test_the_answer_is_a_table_in_jupyter_and_json(wrong_axis):
    program, inputs, onnx_path, _ = wrong_axis
    found = localize(program, onnx_path, inputs)
    html = found._repr_html_()
    assert "Where it diverges" in html and "divergence_demo.l1_normalize.default" in html
    [entry] = found.to_json()
    assert entry["cause"] == "lowering" and entry["culprits"][0]["translation"] == "user"


def test_a_runtime_that_agrees_has_no_entry(wrong_axis):
    program, inputs, _, xml = wrong_axis  # OpenVINO's conversion of the op is right
    assert localize(program, xml, inputs).entries == []


def _chain() -> torch.fx.Graph:
    """x → add → mul → sigmoid → sum."""
    graph = torch.fx.Graph()
    value = graph.placeholder("x")
    aten = torch.ops.aten
    for op, args in ((aten.add.Tensor, (1,)), (aten.mul.Tensor, (2,)), (aten.sigmoid.default, ()),
                     (aten.sum.default, ())):
        value = graph.call_function(op, (value, *args))
        value.name = op._opname  # as torch.export names them: add, mul, sigmoid, sum
    graph.output(value)
    return graph


def _diff(name: str, max_abs: float, passed: bool):
    from dynexport.localization.values import NodeDiff

    return NodeDiff(name, max_abs, max_abs / 10, passed)


def test_the_culprit_is_the_first_op_out_of_tolerance_with_its_inputs_within():
    """Everything after the wrong op is off too (and more so); only the first is blamed."""
    from dynexport.localization.blame import first_divergence

    diffs = {"add": _diff("add", 0.0, True), "mul": _diff("mul", 1.0, False),
             "sigmoid": _diff("sigmoid", 2.0, False), "sum": _diff("sum", 9.0, False)}
    found = first_divergence(_chain(), diffs, "onnxruntime")
    assert found.node == "mul" and found.input_max_abs_diff == 0.0 and found.max_abs_diff == 1.0


def test_nodes_without_a_counterpart_are_looked_through():
    """`mul` was fused away by the converter: `sigmoid`'s inputs are judged by `add`'s."""
    from dynexport.localization.blame import first_divergence

    diffs = {"add": _diff("add", 0.0, True), "sigmoid": _diff("sigmoid", 2.0, False),
             "sum": _diff("sum", 9.0, False)}
    assert first_divergence(_chain(), diffs, "onnxruntime").node == "sigmoid"


def test_an_index_that_moves_once_in_ten_thousand_is_out_of_tolerance():
    """Verification lets 0.1 % of labels flip; an intermediate index may not: one moved index
    moves a whole value into another cell."""
    from dynexport.localization.values import compare_values

    cells = torch.arange(10_000)
    moved = cells.numpy().copy()
    moved[7] += 100
    [found] = compare_values({"cells": cells}, {"cells": moved}).values()
    assert found.integer and not found.passed and found.max_abs == 100


def test_an_integer_from_floats_within_tolerance_is_a_boundary_crossing():
    """The floats a cast reads are within tolerance and the integers it makes are not: the fix
    says so instead of blaming the converter's cast."""
    from dynexport.localization import _lowering_fix
    from dynexport.localization.blame import first_divergence
    from dynexport.localization.values import NodeDiff

    diffs = {"add": NodeDiff("add", 0.0, 0.0, True), "mul": NodeDiff("mul", 4e-6, 1e-7, True),
             "sigmoid": NodeDiff("sigmoid", 1.0, 0.01, False, integer=True),
             "sum": NodeDiff("sum", 9.0, 0.1, False)}
    found = first_divergence(_chain(), diffs, "openvino")
    assert found.node == "sigmoid" and found.from_floats
    assert "integer boundary" in _lowering_fix(found, "openvino", {})


def test_int64_values_a_runtime_kept_within_int32_are_told_apart():
    """torch's keys pass 2**31 and the runtime's wrap or saturate within int32: that, not the
    converter's op, is the fix. Keys that differ beyond int32 on both sides are not it."""
    import numpy as np

    from dynexport.localization import _lowering_fix
    from dynexport.localization.blame import culprit
    from dynexport.localization.values import compare_values

    keys = torch.tensor([5, 4_000_000_001, 8_000_000_002, -3_000_000_000])
    wrapped = keys.numpy().astype(np.int32).astype(np.int64)
    saturated = np.clip(keys.numpy(), -2**31, 2**31 - 1)
    other = keys.numpy() + 2**33
    found = compare_values({"w": keys, "s": keys, "o": keys, "small": torch.arange(4)},
                           {"w": wrapped, "s": saturated, "o": other,
                            "small": np.array([0, 1, 2, 4])})
    assert found["w"].narrowed_to_int32 and found["s"].narrowed_to_int32
    assert not found["o"].narrowed_to_int32 and not found["small"].narrowed_to_int32
    node = next(n for n in _chain().nodes if n.op == "call_function")
    assert "int32" in _lowering_fix(culprit(node, found["w"], [], "openvino"), "openvino", {})
    assert "int32" not in _lowering_fix(culprit(node, found["o"], [], "openvino"), "openvino",
                                        {})


def test_reduced_precision_blames_the_op_that_adds_the_error_not_the_ones_that_carry_it():
    from dynexport.localization.blame import added_error
    from dynexport.localization.values import NodeDiff

    diffs = {"add": NodeDiff("add", 0.01, 0.001, False),
             "mul": NodeDiff("mul", 5.0, 0.3, False),  # adds 0.299 by itself
             "sigmoid": NodeDiff("sigmoid", 5.0, 0.31, False),  # carries it, adds 0.01
             "sum": NodeDiff("sum", 50.0, 0.2, False)}
    ranked = [c.node for c in added_error(_chain(), diffs, "openvino")]
    assert ranked == ["mul", "sigmoid", "add"]


def test_an_error_a_later_op_discards_is_not_blamed():
    """`mul`'s error (a branch a `where` drops, say) is gone by `sigmoid`: not a culprit."""
    from dynexport.localization.blame import added_error
    from dynexport.localization.values import NodeDiff

    diffs = {"add": NodeDiff("add", 0.01, 0.001, False),
             "mul": NodeDiff("mul", 3e38, 1e30, False),
             "sigmoid": NodeDiff("sigmoid", 0.01, 0.002, False)}
    assert [c.node for c in added_error(_chain(), diffs, "openvino")] == ["add"]


def test_a_racing_user_translation_is_nondeterminism(tmp_path):
    """A translation that sums into repeated indices with ScatterND(add): onnxruntime's
    kernel races with several threads; the op and its line are named, the lowering too."""
    module = _example("scatter_translation")
    inputs = module.get_inputs()
    program = dynexport.export(module.get_model(), inputs, dynamic_shapes=module.dynamic_shapes)
    onnx_path = dynexport.to_onnx(program, tmp_path / "model.onnx")
    [entry] = localize(program, onnx_path, inputs).entries
    assert entry.cause == "nondeterminism"
    [culprit] = entry.culprits
    assert culprit.op == "divergence_demo.cell_sum.default" and culprit.translation == "user"
    assert culprit.location.line == _line_of("scatter_translation",
                                             "return torch.ops.divergence_demo.cell_sum")
    assert "ScatterND(reduction=add)" in entry.fix


def _computes_bf16() -> bool:
    """OpenVINO's CPU plugin takes the bf16 hint here (else it computes f32 and says so)."""
    param = ov.opset13.parameter([2, 2], ov.Type.f32)
    model = ov.Model([ov.opset13.matmul(param, param, False, False)], [param])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    return compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def test_a_cancelling_matrix_product_is_the_bf16_culprit(tmp_path):
    """Squared distances written as |p|^2 - 2 p.c + |c|^2 on coordinates in metres: under bf16
    the matrix product's rounding is the whole loss; the softmax after other layers is not
    blamed for what it carries."""
    if not _computes_bf16():
        pytest.skip("OpenVINO's CPU plugin computes the bf16 hint in f32 on this machine")
    module = _example("clusters")
    inputs = module.get_inputs()
    program = dynexport.export(module.get_model(), inputs)
    ov.save_model(dynexport.to_openvino(program), tmp_path / "model.xml",
                  compress_to_fp16=False)
    [entry] = localize(program, tmp_path / "model.xml", inputs, precision="bf16",
                       config={"INFERENCE_PRECISION_HINT": "bf16"}).entries
    assert entry.cause == "precision"
    first = entry.culprits[0]
    assert first.op == "aten.mm.default"
    assert first.location.line == _line_of("clusters", "d2 = p2 - 2 * points")
    assert "softmax" not in {c.op.split(".")[1].strip("_") for c in entry.culprits[:1]}
    assert f"clusters.py:{first.location.line}" in entry.fix


def test_the_report_names_the_culprit_and_drops_the_baked_constant_guess(cli, tmp_path):
    """Through the CLI: the wrong translation fails onnxruntime's verification on both inputs;
    the report's divergence names the line, and no `baked_constant` is guessed."""
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, EXAMPLES / "wrong_axis_translation.py")
    assert code == 1
    report = read_report(out)
    entries = report["divergence"]
    assert {(e["runtime"], e["inputs"], e["cause"]) for e in entries} == {
        ("onnxruntime", "example", "lowering"), ("onnxruntime", "probe", "lowering")}
    assert all(e["culprits"][0]["line"] == _line_of("wrong_axis_translation", "shares = ")
               for e in entries)
    assert not [h for h in report["hazards"] if h["category"] == "baked_constant"]
    assert "Where it diverges" in (out / "report.md").read_text()
    assert "Where it diverges" in stdout


def test_a_value_baked_into_the_program_is_not_blamed_on_the_runtime(cli, tmp_path):
    """The program itself differs from eager on the probe: localisation says so instead of
    blaming a converted op, and the baked_constant hazard stays."""
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, REPO / "examples" / "hazards" / "baked_constant.py")
    assert code == 1
    report = read_report(out)
    assert "divergence" not in report
    assert any("the exported program itself differs from eager" in n for n in report["notes"])
    assert any(h["category"] == "baked_constant" for h in report["hazards"])


def test_int64_keys_openvino_computes_in_int32_are_traced_to_the_key(cli, tmp_path):
    """OpenVINO returns fewer unique voxels (a shape, not values, differs at the output); the
    divergence is followed to the line that builds the key, with int32 as the fix."""
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, EXAMPLES / "int64_keys.py")
    assert code == 1
    report = read_report(out)
    failed = {(v["runtime"], v["inputs"]) for v in report["verification"] if not v["passed"]}
    assert failed == {("openvino", "example"), ("openvino", "probe")}
    assert all("shape" in v["error"] for v in report["verification"] if not v["passed"])
    for entry in report["divergence"]:
        assert (entry["runtime"], entry["cause"]) == ("openvino", "lowering")
        key = entry["culprits"][0]
        assert key["line"] == _line_of("int64_keys", "keys = coords[:, 0] * SWEEP_STRIDE")
        assert key["input_max_abs_diff"] == 0 and "within int32" in entry["fix"]
    assert {e["inputs"] for e in report["divergence"]} == {"example", "probe"}


def test_a_clean_run_has_no_localize_stage(cli, tmp_path):
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, REPO / "examples" / "convnet.py")
    assert code == 0
    assert "localize" not in [s["name"] for s in read_report(out)["stages"]]


def test_a_racing_kernel_fails_the_run_even_where_verification_agreed(cli, write_script,
                                                                      tmp_path):
    """The scatters are too small for onnxruntime to split: every run agrees with eager, and
    the shipped graph still holds ScatterND(add), reported at the calling line; exit 1."""
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, write_script(SMALL_RACY_SCRIPT))
    assert code == 1
    report = read_report(out)
    assert all(v["passed"] for v in report["verification"])
    [entry] = report["divergence"]
    assert (entry["runtime"], entry["cause"]) == ("onnxruntime", "nondeterminism")
    assert entry["culprits"][0]["line"] == _line_of("scatter_translation",
                                                    "return torch.ops.divergence_demo.cell_sum")
    assert "ScatterND(reduction=add)" in entry["fix"] and not report["ok"]

