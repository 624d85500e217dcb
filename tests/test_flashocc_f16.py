"""FlashOcc `small` under real f16 (Intel GPU/NPU numerics; a CPU with avx512_fp16 computes
them too): the camera geometry must stay f32 by the DisablePrecisionConversion marks that
OpenVINO's f16 conversion honours (docs/devices.md), not by where the CPU plugin's f32 tail
happens to end, so no frustum point changes BEV cell, and the metric holds."""

import openvino as ov
import pytest
from helpers import REPO, read_report


def _has_f16() -> bool:
    return "FP16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.mark.skipif(not _has_f16(), reason="this CPU has no f16 arithmetic (FP16 is not among "
                    "OpenVINO's OPTIMIZATION_CAPABILITIES; avx512_fp16 is missing): OpenVINO "
                    "computes the f16 hint in f32 here, so f16 numerics cannot be checked")
def test_flashocc_small_keeps_its_geometry_under_f16(cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--precision", "f16", REPO / "examples" / "flashocc.py",
                          "--config", "small")
    assert code == 0, stdout
    report = read_report(out)
    assert report["precision"]["inference_precision"] == "f16"
    cells = [c for c in report["precision"]["comparisons"] if c["output"] == "point_cells"]
    assert cells and all(c["label_agreement"] >= 0.999 for c in cells)
    rows = {(r["runtime"], r["precision"]): r for r in report["accuracy"]["rows"]}
    assert rows[("openvino", "f16")]["delta"] >= -0.5
