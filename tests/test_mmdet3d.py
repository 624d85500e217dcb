"""`python -m dynexport --mmdet3d CONFIG` on the configs shipped in the mmdet3d wheel.

Needs the mmdet3d extra (README: "OpenMMLab models (optional)"); `.ci/run` installs it in an
environment of its own and runs this file there."""

import argparse
from pathlib import Path

import pytest
import torch
from conftest import read_report

mmdet3d = pytest.importorskip(
    "mmdet3d", reason="the mmdet3d extra is not installed in this environment; see README, "
                      "'OpenMMLab models (optional)' (.ci/run runs these tests in its own venv)")

from dynexport.integrations import mmcv_standin  # noqa: E402
from dynexport.integrations.mmdet3d import build_detector, load_config  # noqa: E402
from dynexport.script import ScriptError  # noqa: E402

CONFIGS = Path(mmdet3d.__file__).parent / ".mim" / "configs"
SMOKE = CONFIGS / "smoke" / "smoke_dla34_dlaneck_gn-all_4xb8-6x_kitti-mono3d.py"
FCOS3D = CONFIGS / "fcos3d" / "fcos3d_r101-caffe-dcn_fpn_head-gn_8xb2-1x_nus-mono3d.py"
POINTPILLARS = CONFIGS / "pointpillars" / "pointpillars_hv_secfpn_8xb6-160e_kitti-3d-car.py"
# Plain convolutions in place of DCN (DCNv2 needs mmcv's compiled ops).
SMOKE_NO_DCN = ["model.neck.use_dcn=False"]
FCOS3D_NO_DCN = ["model.backbone.dcn=None",
                 "model.backbone.stage_with_dcn=(False,False,False,False)",
                 "model.bbox_head.dcn_on_last_conv=False"]
DCN_OP = "mmcv_standin.modulated_deform_conv2d.default"


@pytest.mark.parametrize("config, size, overrides, head, outputs", [
    (SMOKE, "96x320", SMOKE_NO_DCN, "smoke_mono3d_head.py", ["cls_scores", "bbox_preds"]),
    (FCOS3D, "96x160", FCOS3D_NO_DCN, "fcos_mono3d_head.py",
     ["cls_scores", "bbox_preds", "dir_cls_preds", "attr_preds", "centernesses"]),
], ids=["smoke", "fcos3d"])
def test_shipped_config_exports_converts_and_verifies(cli, tmp_path, config, size, overrides,
                                                      head, outputs):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--mmdet3d", config, "--input-size", size,
                          "--cfg-options", *overrides)
    assert code == 0, stdout
    report = read_report(out)
    assert report["ok"] and report["capture"]["strategy"] == "strict"
    assert [s["status"] for s in report["stages"]] == ["ok"] * 6
    checked = {(v["runtime"], v["inputs"]) for v in report["verification"]}
    assert checked == {(r, i) for r in ("onnxruntime", "openvino") for i in ("example", "probe")}
    assert all(v["passed"] for v in report["verification"])
    levels = 1 if config == SMOKE else 5  # SMOKE: one feature map; FCOS3D: 5 FPN levels
    assert {v["output"] for v in report["verification"]} == {
        f"{name}.{level}" for name in outputs for level in range(levels)}
    # The report says that the post-processing is not in the graph, at its definition.
    [note] = report["hazards"]
    assert (note["category"], note["severity"]) == ("non_tensor_output", "warning")
    assert note["file"].endswith(head) and note["code"].startswith("def predict_by_feat(")
    assert "not in the graph" in note["message"]


def test_dcn_config_is_an_unsupported_op_hazard_at_the_mmcv_line(cli, tmp_path):
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, "--mmdet3d", SMOKE, "--input-size", "96x320")  # DCN as shipped
    assert code == 1
    report = read_report(out)
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status == {"load": "ok", "capture": "ok", "decompose": "ok", "onnx": "failed",
                      "openvino": "failed", "verify": "skipped"}
    assert {(op["op"], op["backend"]) for op in report["unsupported_ops"]} == {
        (DCN_OP, "onnx"), (DCN_OP, "openvino")}
    assert all(op["file"].endswith("mmcv/ops/modulated_deform_conv.py")
               for op in report["unsupported_ops"])
    hazards = [h for h in report["hazards"] if h["category"] == "unsupported_op"]
    assert len(hazards) == 2 and all(h["severity"] == "error" for h in hazards)
    assert all(DCN_OP in h["message"] and "modulated_deform_conv2d(" in h["code"]
               for h in hazards)


@pytest.mark.skipif(mmcv_standin.has_compiled_ops(), reason="mmcv has its compiled ops here")
def test_dcn_called_eagerly_raises_a_clear_error():
    mmcv_standin.install()
    from mmcv.ops import ModulatedDeformConv2dPack

    with pytest.raises(mmcv_standin.MmcvOpUnavailable,
                       match=r"modulated_deform_conv_forward.*modulated_deform_conv\.py:\d+.*"
                             r"mmcv-lite"):
        ModulatedDeformConv2dPack(4, 4, 3, padding=1)(torch.randn(1, 4, 8, 8))


def _checkpoint(tmp_path, state: dict, **extra) -> Path:
    path = tmp_path / "smoke.pth"
    torch.save({"state_dict": state, "meta": {"config": "smoke"}, **extra}, path)
    return path


def test_checkpoint_weights_are_the_ones_exported(tmp_path):
    trained = build_detector(SMOKE, cfg_options={"model.neck.use_dcn": False})
    state = {key: value + 0.5 if value.is_floating_point() else value
             for key, value in trained.state_dict().items()}
    script = load_config(SMOKE, ["--checkpoint", str(_checkpoint(tmp_path, state)),
                                 "--input-size", "64x64", "--cfg-options", *SMOKE_NO_DCN])
    loaded = script.model.detector.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


@pytest.mark.parametrize("drop, extra, expected", [
    ("bbox_head", {}, "has no values for"),
    (None, {"message_hub": argparse.Namespace(step=1)}, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"),
], ids=["missing_weights", "not_weights_only"])
def test_unusable_checkpoint_is_a_script_error(tmp_path, drop, extra, expected):
    state = build_detector(SMOKE, cfg_options={"model.neck.use_dcn": False}).state_dict()
    state = {key: value for key, value in state.items() if not drop or drop not in key}
    path = _checkpoint(tmp_path, state, **extra)
    with pytest.raises(ScriptError, match=expected):
        load_config(SMOKE, ["--checkpoint", str(path), "--cfg-options", *SMOKE_NO_DCN])


@pytest.mark.parametrize("args, expected", [
    ([FCOS3D], "--input-size HEIGHTxWIDTH"),  # its test pipeline keeps each image's size
    ([SMOKE, "--input-size", "384"], "is not a size"),
    ([SMOKE, "--cfg-options", "model.type=NoSuchDetector"], "could not build the model"),
    ([POINTPILLARS], "point clouds"),
    (["missing_config.py"], "does not exist"),
    ([SMOKE, "--checkpoint"], "expected one argument"),
])
def test_unusable_config_or_arguments_exit_2(cli, tmp_path, args, expected):
    code, _, stderr = cli("--out", tmp_path / "out", "--mmdet3d", *args)
    assert code == 2
    assert expected in stderr and "Traceback" not in stderr
