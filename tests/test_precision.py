"""--precision on a small conv net: bf16 hint, int8 (NNCF) and fp16 weights, each timed and
compared with the f32 model; verification stays f32. No timing assertions."""

import numpy as np
import openvino as ov
import openvino.opset15 as ops
import pytest
from helpers import read_report

from dynexport.precision import index_math_layers

SCRIPT = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(32, 10)

    def forward(self, images):
        logits = self.classifier(self.features(images).flatten(1))
        return {"logits": logits, "labels": logits.argmax(-1)}

def _images(seed, batch=2):
    return (torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)),)

def get_model():
    torch.manual_seed(0)
    return Net().eval()

def get_inputs():
    return _images(1)

def get_probe_inputs():
    return _images(2, batch=3)

def get_calibration_inputs():
    return [_images(10 + i) for i in range(4)]

dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=16)},)
"""


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "net.py"
    path.write_text(SCRIPT)
    return path


def _run(cli, out, script, *options):
    code, stdout, _ = cli("--out", out, *options, script)
    return code, stdout, read_report(out)


def _comparisons_are_complete(precision: dict) -> None:
    outputs = {(c["inputs"], c["output"]) for c in precision["comparisons"]}
    assert outputs == {(i, o) for i in ("example", "probe") for o in ("logits", "labels")}
    for c in precision["comparisons"]:
        assert c["max_abs_diff"] is not None
        # compare.label_agreement: labels have it; logits not judged by their labels do not
        if c["output"] == "labels":
            assert 0 <= c["label_agreement"] <= 1
        else:
            assert c["label_agreement"] is None


def test_bf16_compiles_with_the_hint_and_verification_stays_f32(cli, net, tmp_path):
    code, stdout, report = _run(cli, tmp_path, net, "--precision", "bf16", "--bench")
    assert code == 0, report["stages"]
    precision = report["precision"]
    assert precision["openvino_config"] == {"INFERENCE_PRECISION_HINT": "bf16"}
    assert precision["artifact"] is None  # the f32 IR, compiled with the hint
    # A CPU that lists BF16 computes in it. One that does not may fall back to f32 or, as
    # OpenVINO 2026.4 does on AVX-512 Xeons without avx512_bf16, still report bf16.
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert precision["inference_precision"] in (("bf16",) if has_bf16 else ("bf16", "f32"))
    _comparisons_are_complete(precision)
    assert precision["speedup"] > 0 and precision["calibration_samples"] is None
    openvino = [b for b in report["benchmark"] if b["runtime"] == "openvino"]
    assert [b["precision"] for b in openvino] == ["f32", "bf16"]
    assert all(b["min_ms"] <= b["median_ms"] <= b["max_ms"] for b in report["benchmark"])
    assert all(v["passed"] for v in report["verification"])
    assert "Precision bf16 against f32" in stdout


def test_int8_writes_a_quantized_ir_and_reports_agreement(cli, net, tmp_path):
    code, _, report = _run(cli, tmp_path, net, "--precision", "int8")
    assert code == 0, report["stages"]
    precision = report["precision"]
    assert precision["artifact"] == str(tmp_path / "openvino_int8" / "model.xml")
    assert precision["calibration_samples"] == 4  # get_calibration_inputs, not example+probe
    assert precision["not_quantized"] == 0  # no index math in a classifier
    assert "accuracy_control" not in precision  # no metric: plain nncf.quantize
    _comparisons_are_complete(precision)
    quantized = ov.Core().read_model(precision["artifact"])
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    f32 = ov.Core().read_model(tmp_path / "openvino" / "model.xml")
    assert not any(op.get_type_name() == "FakeQuantize" for op in f32.get_ops())
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["precision"]["status"] == "ok"
    assert stages["precision"]["artifact"] == precision["artifact"]


def test_fp16_weights_writes_f16_constants(cli, net, tmp_path):
    code, _, report = _run(cli, tmp_path, net, "--precision", "fp16-weights")
    assert code == 0, report["stages"]
    precision = report["precision"]
    _comparisons_are_complete(precision)

    def float_constant_types(path):
        return {op.get_output_element_type(0).get_type_name()
                for op in ov.Core().read_model(path).get_ops()
                if op.get_type_name() == "Constant"
                and op.get_output_element_type(0).is_real()}

    assert "f16" in float_constant_types(precision["artifact"])
    assert float_constant_types(tmp_path / "openvino" / "model.xml") == {"f32"}


def test_default_report_has_no_precision_key(cli, net, tmp_path):
    code, _, report = _run(cli, tmp_path, net, "--to", "onnx", "--no-verify")
    assert code == 0 and "precision" not in report and "serving" not in report


def test_precision_needs_the_openvino_target(cli, net, tmp_path):
    code, _, report = _run(cli, tmp_path, net, "--to", "onnx", "--precision", "bf16")
    assert code == 0
    stage = next(s for s in report["stages"] if s["name"] == "precision")
    assert stage["status"] == "skipped" and "openvino" in stage["error"]


def test_bad_calibration_inputs_are_an_unusable_script(cli, write_script, tmp_path):
    script = write_script(SCRIPT.replace("return [_images(10 + i) for i in range(4)]",
                                         "return 3"))
    code, _, err = cli("--out", tmp_path / "out", "--precision", "int8", script)
    assert code == 2 and "get_calibration_inputs()" in err


def test_unknown_precision_is_a_usage_error(cli, net, tmp_path):
    code, _, err = cli("--out", tmp_path, "--precision", "int4", net)
    assert code == 2 and "--precision" in err


def _index_model(path):
    """Coordinates from a camera-like matrix product, truncated to cell indices that gather
    features, next to a learned layer whose argmax is only an output (a label)."""
    points = ops.parameter([8, 3], np.float32, name="points")
    camera = ops.parameter([3, 3], np.float32, name="camera")
    features = ops.parameter([16, 4], np.float32, name="features")
    moved = ops.matmul(points, camera, False, False)
    moved.set_friendly_name("geometry/MatMul")
    scaled = ops.divide(moved, ops.constant(np.float32(0.5)))
    scaled.set_friendly_name("geometry/Divide")
    cells = ops.convert(ops.floor(scaled), "i64")
    cells.set_friendly_name("geometry/Convert")
    flat = ops.reduce_sum(cells, ops.constant(np.int64(1)), False)
    rows = ops.gather(features, ops.clamp(flat, 0, 15), ops.constant(np.int64(0)))
    learned = ops.matmul(rows, ops.constant(np.ones((4, 5), np.float32)), False, False)
    learned.set_friendly_name("head/MatMul")
    labels = ops.topk(learned, ops.constant(np.int64(1)), 1, "max", "value", "i64")
    labels.set_friendly_name("head/argmax")
    model = ov.Model([learned, ops.convert(labels.output(1), "i32")],
                     [points, camera, features])
    ov.save_model(model, path, compress_to_fp16=False)
    return path


def test_index_math_is_the_float_work_that_becomes_indices(tmp_path):
    names = set(index_math_layers(_index_model(tmp_path / "model.xml")))
    assert {"geometry/MatMul", "geometry/Divide", "geometry/Convert"} <= names
    assert not any(name.startswith("head/") for name in names)  # labels are outputs only
