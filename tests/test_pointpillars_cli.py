"""examples/pointpillars.py --config tiny through the real CLI: the dynamic model verified on two
clouds in both runtimes, its shipped model.onnx and IR bit-for-bit the same at 1, 2, 4 and 8
threads; and `--static --points padded`, an IR without a dynamic dimension."""

import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from helpers import read_report

from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG, OnnxRuntimeRunner, OpenVINORunner

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPT = EXAMPLES / "pointpillars.py"
sys.path.insert(0, str(EXAMPLES))

from pointpillars import TINY, pad_points, point_cloud  # noqa: E402

pytestmark = pytest.mark.slow
OUTPUTS = ("boxes", "scores", "labels")


def _verified(report: dict, outputs: tuple[str, ...]) -> None:
    assert report["ok"] and not report["hazards"] and not report["unsupported_ops"]
    checked = {(v["runtime"], v["inputs"], v["output"]) for v in report["verification"]}
    assert checked == {(runtime, inputs, output) for runtime in ("onnxruntime", "openvino")
                       for inputs in ("example", "probe") for output in outputs}
    assert all(v["passed"] for v in report["verification"])


def test_dynamic_points_verify_and_the_shipped_models_are_deterministic(cli, tmp_path):
    code, _, _ = cli("--out", tmp_path, SCRIPT, "--config", "tiny")
    report = read_report(tmp_path)
    assert code == 0, report["stages"]
    _verified(report, OUTPUTS)
    ops = {h["what"] for h in report.get("handled", [])}
    assert any("voxelize" in what for what in ops) and any("circle_nms" in what for what in ops)

    clouds = [point_cloud(TINY, 2500, seed=1).numpy(), point_cloud(TINY, 3400, seed=2).numpy()]
    ir = ov.Core().read_model(tmp_path / "openvino" / "model.xml")
    for make in (lambda t: OnnxRuntimeRunner(tmp_path / "model.onnx", threads=t, spin=False),
                 lambda t: OpenVINORunner(ir, "CPU", {**DEFAULT_OPENVINO_CONFIG,
                                                      "INFERENCE_NUM_THREADS": t})):
        results = {threads: [make(threads).run([cloud]) for cloud in clouds]
                   for threads in (1, 2, 4, 8)}
        for threads in (2, 4, 8):
            for one, other in zip(results[1], results[threads], strict=True):
                for a, b in zip(one, other, strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=f"{threads} threads")
        assert len(results[1][0][0]) != len(results[1][1][0])   # other clouds, other counts


def test_static_padded_points_give_an_ir_without_dynamic_dimensions(cli, tmp_path):
    code, _, _ = cli("--static", "--out", tmp_path, SCRIPT, "--config", "tiny",
                     "--points", "padded")
    report = read_report(tmp_path)
    assert code == 0, report["stages"]
    _verified(report, OUTPUTS + ("valid",))
    ir = ov.Core().read_model(tmp_path / "openvino" / "model.xml")
    assert [tuple(i.get_shape()) for i in ir.inputs] == [(4096, 4)]
    assert not [op.get_friendly_name() for op in ir.get_ops()
                for output in op.outputs() if output.get_partial_shape().is_dynamic]
    # The padded cloud gives the dynamic model's detections, as `valid` rows.
    runner = OpenVINORunner(ir, "CPU")
    boxes, scores, labels, valid = runner.run(
        [pad_points(point_cloud(TINY, 3400, seed=2), 4096, TINY).numpy()])
    assert valid.any() and (scores[~valid] == 0).all()
