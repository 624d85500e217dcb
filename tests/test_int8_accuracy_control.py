"""--precision int8 with the script's validation data and metric: NNCF's accuracy control keeps
the layers that cost more than --accuracy-budget in floating point, and report.json says what it
did. --precision f16 says plainly when the device has no f16 arithmetic.

The model: two linear layers whose first input has one channel of huge values the f32 model
ignores (its weights are zero) but int8 activation quantisation does not: with a scale covering
±HOSTILE, every other channel rounds to a few levels and the labels go astray, unless the first
layer stays in float. The references are NumPy (the same weights, the same labels)."""

import logging
import sys

import numpy as np
import openvino as ov
import pytest
import torch
from helpers import read_report

from dynexport.inputs import normalize_inputs
from dynexport.precision import apply_precision
from dynexport.precision import variants as precision_variants
from dynexport.precision.quantize import _nncf_log

SCRIPT = """
import numpy as np
import torch
from torch import nn

FEATURES, HIDDEN, CLASSES, ROWS, SAMPLES = 16, 32, 6, 64, 4
HOSTILE = {hostile}


def weights():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((HIDDEN, FEATURES)).astype(np.float32) / 4
    w1[:, 0] = 0.0  # channel 0 does not matter to the f32 model
    b1 = rng.standard_normal(HIDDEN).astype(np.float32) / 4
    w2 = rng.standard_normal((CLASSES, HIDDEN)).astype(np.float32) / 4
    b2 = rng.standard_normal(CLASSES).astype(np.float32) / 4
    return w1, b1, w2, b2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(FEATURES, HIDDEN), nn.Linear(HIDDEN, CLASSES)
        w1, b1, w2, b2 = weights()
        with torch.no_grad():
            for layer, w, b in ((self.fc1, w1, b1), (self.fc2, w2, b2)):
                layer.weight.copy_(torch.from_numpy(w))
                layer.bias.copy_(torch.from_numpy(b))

    def forward(self, x):
        logits = self.fc2(torch.relu(self.fc1(x)))
        return {{"logits": logits, "labels": logits.argmax(-1)}}


def features(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    x[:, 0] = HOSTILE * rng.choice([-1.0, 1.0], ROWS)
    return x


def targets(seed):
    \"\"\"The f32 model's labels (in NumPy), one row in eight replaced by another class.\"\"\"
    w1, b1, w2, b2 = weights()
    x = features(seed)
    labels = (np.maximum(x @ w1.T + b1, 0) @ w2.T + b2).argmax(-1)
    labels[::8] = (labels[::8] + 1) % CLASSES
    return labels


def get_model():
    return Net().eval()


def get_inputs():
    return (torch.from_numpy(features(1)),)


def get_calibration_inputs():
    return [(torch.from_numpy(features(10 + i)),) for i in range(4)]


def get_validation_data():
    return [((torch.from_numpy(features(100 + i)),), torch.from_numpy(targets(100 + i)))
            for i in range(SAMPLES)]


def metric(outputs, targets):
    right = sum(int((o["labels"] == t).sum()) for o, t in zip(outputs, targets))
    return {{"accuracy": 100.0 * right / sum(len(t) for t in targets)}}
{extra}
"""

NO_METRIC = "\ndel metric\n"


def _expected_f32_accuracy() -> float:
    """Accuracy of the f32 model on the validation data, written independently of the script:
    the labels of the f32 model agree with the targets except where one in eight was moved."""
    return 100.0 * 7 / 8


def _write(write_script, hostile: float, extra: str = "") -> object:
    return write_script(SCRIPT.format(hostile=hostile, extra=extra))


def _first_layer(xml) -> str:
    """The MatMul that reads the model's input, found in the f32 IR."""
    model = ov.Core().read_model(xml)
    return next(op.get_friendly_name() for op in model.get_ops()
                if op.get_type_name() == "MatMul"
                and op.input_value(0).get_node().get_type_name() == "Parameter")


def _fake_quantized_input(model, name: str) -> bool:
    op = next(op for op in model.get_ops() if op.get_friendly_name() == name)
    source = op.input_value(0).get_node()
    while source.get_type_name() == "Convert":
        source = source.input_value(0).get_node()
    return source.get_type_name() == "FakeQuantize"


def test_accuracy_control_reverts_the_layer_that_costs_accuracy(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--to", "openvino", "--precision", "int8",
                          "--accuracy-budget", "3", _write(write_script, hostile=1000.0))
    assert code == 0, stdout
    report = read_report(out)
    control = report["precision"]["accuracy_control"]
    expected = _expected_f32_accuracy()
    assert control["metric"] == "accuracy" and control["samples"] == 4
    assert control["max_drop"] == 3.0 and control["drop_type"] == "absolute"
    assert control["metric_f32"] == pytest.approx(expected)
    # fully quantised, the input's huge channel wipes out the others: far below budget
    assert control["metric_int8_before"] < expected - 3
    assert control["metric_int8_after"] >= expected - 3
    first = _first_layer(out / "openvino" / "model.xml")
    assert control["reverted"]["count"] == len(control["reverted"]["layers"]) >= 1
    assert first in control["reverted"]["layers"]
    assert control["quantized_layers"] > control["reverted"]["count"]  # not all reverted
    shipped = ov.Core().read_model(report["precision"]["artifact"])
    assert not _fake_quantized_input(shipped, first)
    assert any(op.get_type_name() == "FakeQuantize" for op in shipped.get_ops())
    # the accuracy stage measures the shipped IR on its own, against eager f32
    rows = {(r["runtime"], r["precision"]): r for r in report["accuracy"]["rows"]}
    assert rows["eager", "f32"]["value"] == pytest.approx(expected)
    assert rows["openvino", "int8"]["value"] == pytest.approx(control["metric_int8_after"])
    assert rows["openvino", "int8"]["delta"] >= -3
    markdown = (out / "report.md").read_text()
    assert "NNCF's accuracy control kept" in markdown and first in markdown


def test_a_budget_met_by_plain_quantization_reverts_nothing(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--to", "openvino", "--precision", "int8",
                          "--accuracy-budget", "3", _write(write_script, hostile=1.0))
    assert code == 0, stdout
    control = read_report(out)["precision"]["accuracy_control"]
    assert control["metric_f32"] == pytest.approx(_expected_f32_accuracy())
    assert control["reverted"] == {"count": 0, "layers": []}
    assert control["metric_int8_after"] == control["metric_int8_before"]
    assert control["metric_f32"] - control["metric_int8_after"] <= 3
    shipped = ov.Core().read_model(read_report(out)["precision"]["artifact"])
    assert _fake_quantized_input(shipped, _first_layer(out / "openvino" / "model.xml"))
    assert "reverted no layer" in (out / "report.md").read_text()


def test_without_a_metric_int8_is_plain_quantization(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--to", "openvino", "--precision", "int8",
                          _write(write_script, hostile=1000.0, extra=NO_METRIC))
    assert code == 0, stdout
    precision = read_report(out)["precision"]
    assert "accuracy_control" not in precision
    shipped = ov.Core().read_model(precision["artifact"])
    # nothing reverted: the first layer keeps its (harmful) quantised input
    assert _fake_quantized_input(shipped, _first_layer(out / "openvino" / "model.xml"))


def test_auto_candidates_say_what_they_computed(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--to", "openvino", "--precision", "auto",
                          "--accuracy-budget", "3", _write(write_script, hostile=1000.0))
    assert code == 0, stdout
    candidates = {c["precision"]: c for c in read_report(out)["precision"]["candidates"]}
    assert "NNCF's accuracy control kept" in candidates["int8"]["note"]
    assert candidates["int8"]["delta"] >= -3
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "FP16" in capabilities:
        assert "note" not in candidates["f16"]
    else:
        assert "has no f16 arithmetic" in candidates["f16"]["note"]
        assert "no f16 arithmetic" in (out / "report.md").read_text()


def test_nncf_log_is_collected_not_printed(capfd):
    import nncf

    nncf.set_log_level(logging.INFO)  # NNCF's default: INFO to stdout
    logger = logging.getLogger("nncf")
    handlers = list(logger.handlers)
    # NNCF's handler keeps the stdout of when nncf was imported: this test's, so that the suite
    # can run again in the same process (an earlier session's capture is closed by then).
    # Assigned, not setStream(): that flushes the old stream, which may be closed.
    streams = [(h, h.stream) for h in handlers if isinstance(h, logging.StreamHandler)]
    for handler, _ in streams:
        handler.stream = sys.stdout
    try:
        with _nncf_log() as messages:
            logger.info("Metric of initial model: 1.5")
        assert messages == ["Metric of initial model: 1.5"]
        out, err = capfd.readouterr()
        assert "Metric of initial model" not in out + err
        assert logger.handlers == handlers  # NNCF's own handler back in place
        logger.info("shown again")
        assert "shown again" in capfd.readouterr().out
    finally:
        for handler, stream in streams:
            handler.stream = stream


# --- f16: what the device really computes --------------------------------------------------


@pytest.fixture(scope="module")
def small_ir(tmp_path_factory):
    import openvino.opset15 as ops

    x = ops.parameter([4, 8], np.float32, name="x")
    weight = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    y = ops.matmul(x, ops.constant(weight), False, False)
    path = tmp_path_factory.mktemp("ir") / "model.xml"
    ov.save_model(ov.Model([y], [x]), path, compress_to_fp16=False)
    return path


def _f16(path, tmp_path):
    inputs = normalize_inputs((torch.randn(4, 8, generator=torch.Generator().manual_seed(0)),))
    return apply_precision("f16", path, tmp_path, {"example": inputs}, [], ["y"], runs=1)


def test_f16_without_f16_arithmetic_says_so(small_ir, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_variants, "device_capabilities", lambda device: ["FP32", "BF16"])
    result = _f16(small_ir, tmp_path)
    assert result.note == (
        "this CPU has no f16 arithmetic (OPTIMIZATION_CAPABILITIES: FP32, BF16): OpenVINO "
        f"computed in {result.inference_precision}; the numbers are not an Intel GPU's or "
        "NPU's f16")
    assert result.note in result.summary() and result.to_json()["note"] == result.note


def test_f16_with_f16_arithmetic_has_no_note(small_ir, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_variants, "device_capabilities", lambda device: ["FP32", "FP16"])
    result = _f16(small_ir, tmp_path)
    assert result.note is None and "note" not in result.to_json()
    assert result.openvino_config == {"INFERENCE_PRECISION_HINT": "f16"}


def test_f16_in_the_report_says_what_this_cpu_computed(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--to", "openvino", "--precision", "f16",
                          _write(write_script, hostile=1.0, extra=NO_METRIC))
    assert code == 0, stdout
    precision = read_report(out)["precision"]  # validated against the schema
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert precision["openvino_config"] == {"INFERENCE_PRECISION_HINT": "f16"}
    if "FP16" in capabilities:
        assert "note" not in precision
    else:
        assert precision["inference_precision"] != "f16"
        assert precision["note"].startswith("this CPU has no f16 arithmetic")
        assert precision["note"] in (out / "report.md").read_text()


def test_f16_on_this_cpu_reports_its_real_capabilities(small_ir, tmp_path):
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    result = _f16(small_ir, tmp_path)
    compiled = ov.Core().compile_model(small_ir, "CPU", {"INFERENCE_PRECISION_HINT": "f16"})
    computed = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    short = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
    assert result.inference_precision == next(v for k, v in short.items() if k in computed)
    if "FP16" in capabilities:
        assert result.note is None
    else:  # e.g. an AMD EPYC with avx512_bf16 and no avx512_fp16: bf16, not f16
        assert result.inference_precision != "f16"
        assert f"OPTIMIZATION_CAPABILITIES: {', '.join(capabilities)}" in result.note
        assert f"computed in {result.inference_precision}" in result.note
