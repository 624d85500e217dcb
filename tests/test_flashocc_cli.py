"""examples/flashocc.py --config tiny through the real CLI: both rank modes, both variants."""

from pathlib import Path

import pytest
from conftest import read_report

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "flashocc.py"


def _run(cli, out: Path, *script_args: str) -> tuple[int, dict]:
    code, _, _ = cli("--out", out, SCRIPT, "--config", "tiny", *script_args)
    return code, read_report(out)


@pytest.mark.parametrize("ranks", ["graph", "precomputed"])
def test_export_variant_converts_and_verifies(cli, tmp_path, ranks):
    code, report = _run(cli, tmp_path, "--ranks", ranks)
    assert code == 0, report["stages"]
    assert report["ok"] and not report["hazards"] and not report["unsupported_ops"]
    assert [s["status"] for s in report["stages"]] == ["ok"] * 6
    checked = {(v["runtime"], v["inputs"], v["output"]) for v in report["verification"]}
    assert checked == {(runtime, inputs, output) for runtime in ("onnxruntime", "openvino")
                       for inputs in ("example", "probe") for output in ("occupancy", "logits")}
    assert all(v["passed"] for v in report["verification"])


def test_legacy_variant_is_diagnosed(cli, tmp_path):
    """Today: no capture strategy gets past the seed's numpy output (draft export included),
    so the capture stage fails with every strategy's error and nothing is converted."""
    code, report = _run(cli, tmp_path, "--variant", "legacy")
    assert code == 1 and not report["ok"]
    stages = {s["name"]: s for s in report["stages"]}
    if report["capture"]["strategy"] is None:
        assert stages["capture"]["status"] == "failed"
        assert all(f"{strategy}:" in stages["capture"]["error"]
                   for strategy in ("strict", "non_strict", "draft"))
    assert any(h["file"] and h["file"].endswith("legacy.py") for h in report["hazards"])


def test_legacy_tensorrt_entry_point_converts_with_hazards(cli, tmp_path):
    """FlashOcc's TensorRT entry point (ranks as inputs) captures by draft export and
    verifies; its `.item()` reads of the grid size are reported, so the exit status is 1."""
    code, report = _run(cli, tmp_path, "--variant", "legacy", "--ranks", "precomputed")
    assert code == 1 and report["capture"]["strategy"] is not None
    assert report["verification"] and all(v["passed"] for v in report["verification"])
    assert any(h["file"].endswith("legacy.py") and h["category"] == "tensor_to_python"
               for h in report["hazards"] if h["file"])
