"""The zoo (issue #14, item 4): well-known architectures from transformers, random weights,
small inputs, each through dynexport's whole pipeline in-process. Each converts and verifies
on both runtimes, on the example and on the probe (another batch size, and another image
size or sequence length where the script declares them dynamic), except the known failures
below, whose failure is asserted precisely (so that a fix shows up here as a failing test to
update). benchmarks/coverage.py compares the same scripts with the raw tools."""

from pathlib import Path

import pytest
from helpers import REPO, read_report

pytest.importorskip("transformers")

from dynexport.pipeline import Options, run_script  # noqa: E402

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

ZOO = REPO / "examples" / "zoo"
SCRIPTS = sorted(path.stem for path in ZOO.glob("*.py") if not path.stem.startswith("_"))
# dynexport's own defects on a zoo model that converts and verifies with the raw tools:
# the test is expected to fail until dynexport is fixed (strict: the fix shows as XPASS).
DYNEXPORT_DEFECTS: dict[str, str] = {}
RUNS = {(runtime, inputs) for runtime in ("onnxruntime", "openvino")
        for inputs in ("example", "probe")}

# Failures of the model on a backend that the raw tools share (docs/coverage.md):
# name -> (backend, a fragment of the error), backend "onnx" or "openvino".
# (Swin's torch.onnx `view` failure was one until dynexport/decompositions/attention_layout.py.)
KNOWN_FAILURES: dict[str, tuple[str, str]] = {}
RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}


def test_the_zoo_has_the_architectures_of_the_issue():
    assert {"resnet", "mobilenet_v2", "efficientnet", "convnext", "swin", "vit", "segformer",
            "detector_nms", "bert"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(reason=DYNEXPORT_DEFECTS[name], strict=True))
    if name in DYNEXPORT_DEFECTS else name for name in SCRIPTS])
def test_zoo_model_converts_and_verifies(name: str, tmp_path: Path):
    run_script(ZOO / f"{name}.py", [], Options(out_dir=tmp_path))
    report = read_report(tmp_path)
    assert report["capture"]["strategy"] in ("strict", "non_strict")
    assert not [h for h in report["hazards"] if h["severity"] == "error"], report["hazards"]
    assert not report["unsupported_ops"]
    failed_stages = {s["name"]: s["error"] for s in report["stages"] if s["status"] != "ok"}
    failed_runs = [v for v in report["verification"] if not v["passed"]]
    runs = {(v["runtime"], v["inputs"]) for v in report["verification"]}
    if name not in KNOWN_FAILURES:
        assert not failed_stages, failed_stages
        assert runs == RUNS and not failed_runs, report["verification"]
        assert report["ok"]
        return
    backend, fragment = KNOWN_FAILURES[name]
    assert not report["ok"]
    if backend in failed_stages:  # the conversion fails; the other backend verifies
        assert set(failed_stages) == {backend} and fragment in failed_stages[backend]
        assert runs == {r for r in RUNS if r[0] != RUNTIME[backend]} and not failed_runs
        return
    # converted, but the runtime rejects the model on both inputs; the other runtime verifies
    assert set(failed_stages) <= {"verify"}, failed_stages
    assert runs == RUNS
    assert {(v["runtime"], v["inputs"]) for v in failed_runs} == {
        r for r in RUNS if r[0] == RUNTIME[backend]}
    assert all(fragment in (v["error"] or "") for v in failed_runs), failed_runs
