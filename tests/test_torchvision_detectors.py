"""torchvision's detectors end to end (examples/torchvision_detectors/): `python -m dynexport`
exits 0 with onnxruntime and OpenVINO verified on two images with different numbers of
detections, and the shipped model.onnx and IR match eager on a third image. Needs torchvision
(see the examples' _detectors.py); skipped without it."""

import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, read_report

pytestmark = pytest.mark.slow

FOLDER = REPO / "examples" / "torchvision_detectors"
# each script and the known-library patches its capture goes through
PATCHES = {
    "ssdlite": ["torchvision.batched_nms"],
    "retinanet": ["torchvision.batched_nms"],
    "fasterrcnn": ["torchvision.batched_nms", "torchvision.box_coder_decode",
                   "torchvision.multiscale_roi_align"],
    "maskrcnn": ["torchvision.batched_nms", "torchvision.box_coder_decode",
                 "torchvision.multiscale_roi_align", "torchvision.paste_masks_in_image"],
}


def _script(name: str):
    sys.path.insert(0, str(FOLDER))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(FOLDER))


@pytest.fixture(scope="module")
def detection_models():
    try:
        return _script("_detectors").detection_models()
    except ImportError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", list(PATCHES))
def test_detector_exports_and_verifies(detection_models, name, tmp_path):
    script = _script(name)
    model = script.get_model()
    with torch.no_grad():
        example, probe, test = (model(*inputs()) for inputs in (
            script.get_inputs, script.get_probe_inputs, script.get_test_inputs))
    assert len(example[0]) != len(probe[0]), "the two inputs must keep different numbers of boxes"

    done = subprocess.run([sys.executable, "-m", "dynexport", "--out", str(tmp_path),
                           str(FOLDER / f"{name}.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = read_report(tmp_path)
    checked = {(row["runtime"], row["inputs"]) for row in report["verification"]
               if row["passed"]}
    assert checked == {(r, i) for r in ("onnxruntime", "openvino") for i in ("example", "probe")}
    assert all(row["passed"] for row in report["verification"])
    for patch in PATCHES[name]:
        assert any(f"`{patch}`" in item["what"] for item in report["handled"]), patch

    image = script.get_test_inputs()[0].numpy()
    import onnxruntime
    import openvino as ov

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    onnx_outputs = session.run(None, {session.get_inputs()[0].name: image})
    ir_outputs = list(ov.compile_model(str(tmp_path / "openvino" / "model.xml"), "CPU")(image)
                      .values())
    # the script's absolute tolerance where it declares one (maskrcnn's masks, in [0, 1])
    declared = getattr(script, "tolerances", {})
    for outputs in (onnx_outputs, ir_outputs):
        for index, (got, want) in enumerate(zip(outputs, test, strict=True)):
            assert got.shape == tuple(want.shape)
            atol = declared.get(str(index), {}).get("atol", 1e-3)
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=atol)
