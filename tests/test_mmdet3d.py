"""`python -m dynexport --mmdet3d CONFIG` on the configs shipped in the mmdet3d wheel.

Needs the mmdet3d extra (README: "OpenMMLab models (optional)"); `.ci/run` installs it in an
environment of its own and runs this file there."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_report

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
# Plain convolutions in place of DCN (faster; DCN itself runs on dynexport's deform_conv2d).
SMOKE_NO_DCN = ["model.neck.use_dcn=False"]
FCOS3D_NO_DCN = ["model.backbone.dcn=None",
                 "model.backbone.stage_with_dcn=(False,False,False,False)",
                 "model.bbox_head.dcn_on_last_conv=False"]


FCOS3D_OUTPUTS = ["cls_scores", "bbox_preds", "dir_cls_preds", "attr_preds", "centernesses"]


@pytest.mark.parametrize("config, size, overrides, head, outputs", [
    (SMOKE, "96x320", SMOKE_NO_DCN, "smoke_mono3d_head.py", ["cls_scores", "bbox_preds"]),
    (FCOS3D, "96x160", FCOS3D_NO_DCN, "fcos_mono3d_head.py", FCOS3D_OUTPUTS),
    # As shipped, DCN included (dynexport::deform_conv2d, through the mmcv stand-in).
    (SMOKE, "96x320", [], "smoke_mono3d_head.py", ["cls_scores", "bbox_preds"]),
    (FCOS3D, "96x160", [], "fcos_mono3d_head.py", FCOS3D_OUTPUTS),
], ids=["smoke", "fcos3d", "smoke_dcn", "fcos3d_dcn"])
def test_shipped_config_exports_converts_and_verifies(cli, tmp_path, config, size, overrides,
                                                      head, outputs):
    out = tmp_path / "out"
    options = ["--cfg-options", *overrides] if overrides else []
    code, stdout, _ = cli("--out", out, "--mmdet3d", config, "--input-size", size, *options)
    assert code == 0, stdout
    report = read_report(out)
    assert report["ok"] and report["capture"]["strategy"] == "strict"
    assert [s["status"] for s in report["stages"]] == ["ok"] * 7
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


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """mmcv zero-initialises conv_offset (zero offsets, mask 0.5); random weights make the
    offsets and the mask matter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    return module.eval()


@pytest.mark.skipif(mmcv_standin.has_compiled_ops(), reason="mmcv has its compiled ops here")
@pytest.mark.parametrize("modulated", [True, False], ids=["dcn_v2", "dcn_v1"])
def test_mmcv_dcn_runs_on_dynexport_op_with_mmcv_layout(modulated):
    """mmcv's DeformConv2dPack / ModulatedDeformConv2dPack, eager, against the NumPy loop
    reference of tests/test_deform_conv.py fed with the offsets and mask mmcv's forward makes
    (ModulatedDeformConv2dPack: cat of the first two thirds of conv_offset, sigmoid of the last
    third)."""
    from test_deform_conv import loop_reference

    mmcv_standin.install()
    from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack

    cls = ModulatedDeformConv2dPack if modulated else DeformConv2dPack
    layer = _randomised(cls(4, 6, 3, stride=(2, 1), padding=1, dilation=(1, 2), groups=2,
                            deform_groups=2, bias=modulated), seed=3)
    x = torch.randn(2, 4, 9, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = layer(x)
        predicted = layer.conv_offset(x)
        mask = None
        if modulated:
            dy_dx, mask = predicted[:, :36], torch.sigmoid(predicted[:, 36:]).numpy()
            offset = dy_dx.numpy()
        else:
            offset = predicted.numpy()
    bias = layer.bias.detach().numpy() if modulated else None
    expected = loop_reference(x.numpy(), offset, layer.weight.detach().numpy(), bias, (2, 1),
                              (1, 1), (1, 2), mask)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


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
