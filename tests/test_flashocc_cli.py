"""examples/flashocc.py --config tiny through the real CLI: both rank modes, both variants."""

from pathlib import Path

import pytest
from helpers import read_report

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "flashocc.py"


def _run(cli, out: Path, *script_args: str) -> tuple[int, dict]:
    code, _, _ = cli("--out", out, SCRIPT, "--config", "tiny", *script_args)
    return code, read_report(out)


@pytest.mark.parametrize("ranks", ["graph", "precomputed"])
def test_export_variant_converts_and_verifies(cli, tmp_path, ranks):
    code, report = _run(cli, tmp_path, "--ranks", ranks)
    assert code == 0, report["stages"]
    assert report["ok"] and not report["hazards"] and not report["unsupported_ops"]
    assert [s["status"] for s in report["stages"]] == ["ok"] * 8  # accuracy included
    rows = {(r["runtime"], r["precision"]): r["delta"] for r in report["accuracy"]["rows"]}
    assert set(rows) == {("eager", "f32"), ("onnxruntime", "f32"), ("openvino", "f32")}
    assert all(abs(delta) < 0.5 for delta in rows.values())  # mIoU points
    checked = {(v["runtime"], v["inputs"], v["output"]) for v in report["verification"]}
    # In the graph, the model also says which cell each frustum point fell in.
    outputs = ("occupancy", "logits") + (("point_cells",) if ranks == "graph" else ())
    assert checked == {(runtime, inputs, output) for runtime in ("onnxruntime", "openvino")
                       for inputs in ("example", "probe") for output in outputs}
    assert all(v["passed"] for v in report["verification"])
    for v in report["verification"]:  # every compared output counts what is off
        assert v["elements"] > 0 and 0 <= v["outside"] <= v["elements"]


LEGACY = SCRIPT.parent / "flashocc" / "legacy.py"


def _line(code: str) -> int:
    return next(i for i, line in enumerate(LEGACY.read_text().splitlines(), 1)
                if line.strip().startswith(code))


def test_legacy_variant_reports_every_seed_pattern_at_its_line(cli, tmp_path):
    """No capture strategy gets past the seed's numpy output, so nothing is converted; every
    seed pattern that torch.export cannot take is named at its line with a fix."""
    code, report = _run(cli, tmp_path, "--variant", "legacy")
    assert code == 1 and not report["ok"]
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["capture"]["status"] == "failed"
    assert all(f"{strategy}:" in stages["capture"]["error"]
               for strategy in ("strict", "non_strict", "draft"))
    found = {(h["category"], h["severity"], h["line"]) for h in report["hazards"]
             if h["file"] == str(LEGACY)}
    assert found >= {
        ("tensor_to_python", "warning", _line("if len(kept) == 0:")),
        ("data_dependent_branch", "error", _line("if len(interval_starts) == 0:")),
        ("tensor_to_python", "warning", _line("int(self.grid_size[2]),")),
        ("numpy_conversion", "error", _line("occ_res = occ_res.cpu().numpy()")),
    }
    assert all(h["fix"] for h in report["hazards"])
    assert any(h["category"] == "non_tensor_output" for h in report["hazards"])


def test_legacy_tensorrt_entry_point_converts_with_constant_reads_as_warnings(cli, tmp_path):
    """FlashOcc's TensorRT entry point (ranks as inputs) reads the grid size of a constant
    buffer with `.item()`: the reads are warnings, and the model converts and verifies."""
    code, report = _run(cli, tmp_path, "--variant", "legacy", "--ranks", "precomputed")
    assert code == 0 and report["capture"]["strategy"] is not None
    assert report["verification"] and all(v["passed"] for v in report["verification"])
    reads = [h for h in report["hazards"] if h["file"] == str(LEGACY)]
    assert reads and all(h["category"] == "tensor_to_python" and h["severity"] == "warning"
                         for h in reads)
    assert _line("shape = (1, int(vt.grid_size[2].item())") in {h["line"] for h in reads}
    assert not [h for h in report["hazards"] if h["category"] == "graph_break"]


def test_precision_auto_on_tiny_chooses_by_the_validation_mIoU(cli, tmp_path):
    """bf16, f16 and int8 (NNCF's accuracy control, the script's mIoU as its metric) are each
    made, timed and scored; the choice is within the budget of eager f32 or f32 itself."""
    code, _, _ = cli("--out", tmp_path, "--precision", "auto", "--to", "openvino", SCRIPT,
                     "--config", "tiny", "--ranks", "precomputed")
    report = read_report(tmp_path)
    assert code == 0, report["stages"]
    precision = report["precision"]
    candidates = {c["precision"]: c for c in precision["candidates"]}
    assert set(candidates) == {"bf16", "f16", "int8"}
    assert all("value" in c and "label_agreement" in c for c in candidates.values())
    assert "NNCF's accuracy control" in candidates["int8"]["note"]
    budget = 1.0
    if precision["precision"] == "f32":
        assert all(c["delta"] < -budget for c in candidates.values())
    else:
        assert candidates[precision["precision"]]["delta"] >= -budget
    assert precision["chosen_because"]
    rows = {(r["runtime"], r["precision"]) for r in report["accuracy"]["rows"]}
    assert {("openvino", name) for name in candidates} <= rows
