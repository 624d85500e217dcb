"""The mmdet3d integration's parts that need no OpenMMLab package: the 0.x-convention wrapper
(on a stand-in detector shaped like mmdet3d 0.x's SingleStageMono3DDetector), the CLI without
the extra, and the locator's fallback for models that live in an installed package."""

import importlib.util
import sysconfig
from pathlib import Path

import pytest
import torch
from helpers import read_report

import dynexport
from dynexport.hazards.location import innermost_user_frame
from dynexport.integrations.mmdet3d import DetectorModule

LEGACY_DETECTOR = """
import torch
from dynexport.integrations.mmdet3d import DetectorModule

class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cls = torch.nn.Conv2d(8, 3, 1)
        self.reg = torch.nn.Conv2d(8, 7, 1)

    def forward(self, feats):
        return [self.cls(f) for f in feats], [self.reg(f) for f in feats]

    def get_bboxes(self, cls_scores, bbox_preds, img_metas, rescale=False):
        raise AssertionError("post-processing must stay outside the graph")

class LegacyMono3D(torch.nn.Module):
    # mmdet3d 0.x: forward(return_loss, **kwargs) -> forward_test -> simple_test -> get_bboxes
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bbox_head = Head()

    def forward(self, img, img_metas, return_loss=True, **kwargs):
        assert not return_loss
        return self.forward_test(img, img_metas, **kwargs)

    def forward_test(self, imgs, img_metas, **kwargs):
        return self.simple_test(imgs[0], img_metas[0], **kwargs)

    def simple_test(self, img, img_metas, rescale=False):
        assert img_metas[0]["img_shape"] == tuple(img.shape[-2:])
        feats = [self.backbone(img)]
        feats.append(torch.nn.functional.max_pool2d(feats[0], 2))
        outs = self.bbox_head(feats)
        return self.bbox_head.get_bboxes(*outs, img_metas, rescale=rescale)

def get_model():
    torch.manual_seed(0)
    return DetectorModule(LegacyMono3D().eval(), {"img_shape": (32, 48)})

def get_inputs():
    return (torch.randn(1, 3, 32, 48),)
"""


@pytest.fixture
def legacy(write_script):
    return write_script(LEGACY_DETECTOR, "legacy_mono3d.py")


def test_legacy_detector_exports_its_raw_head_outputs(cli, legacy, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, legacy)
    assert code == 0, stdout
    report = read_report(out)
    assert report["capture"]["strategy"] == "strict"
    assert {v["output"] for v in report["verification"]} == {
        "cls_scores.0", "cls_scores.1", "bbox_preds.0", "bbox_preds.1"}
    assert all(v["passed"] for v in report["verification"])


def test_wrapper_returns_what_the_head_hands_to_its_post_processing(legacy):
    from dynexport.script import load_script

    script = load_script(legacy)
    model = script.model
    outputs = model(*script.example.args)
    detector = model.detector
    feats = [detector.backbone(script.example.args[0])]
    feats.append(torch.nn.functional.max_pool2d(feats[0], 2))
    cls_scores, bbox_preds = detector.bbox_head(feats)
    assert set(outputs) == {"cls_scores", "bbox_preds"}
    for got, want in zip(outputs["cls_scores"] + outputs["bbox_preds"], cls_scores + bbox_preds,
                         strict=True):
        torch.testing.assert_close(got, want)
    hazard = model.postprocessing_hazard()
    assert (hazard.category, hazard.severity) == ("non_tensor_output", "warning")
    assert hazard.file == str(legacy) and hazard.code.startswith("def get_bboxes(")
    assert "not in the graph" in hazard.message


def test_a_module_of_neither_convention_is_refused():
    with pytest.raises(ValueError, match="neither mmdet3d 1.x"):
        DetectorModule(torch.nn.Conv2d(3, 3, 1))


@pytest.mark.skipif(importlib.util.find_spec("mmdet3d") is not None,
                    reason="the mmdet3d extra is installed in this environment")
def test_mmdet3d_option_without_the_extra_is_unusable(cli, tmp_path):
    config = tmp_path / "config.py"
    config.write_text("model = dict(type='FCOSMono3D')\n")
    code, _, stderr = cli("--out", tmp_path / "out", "--mmdet3d", config)
    assert code == 2
    assert "not installed" in stderr and "constraints-mmdet3d.txt" in stderr
    assert '".[mmdet3d]"' in stderr  # not eaten as rich markup
    assert "Traceback" not in stderr


@pytest.mark.parametrize("argv, expected", [
    (["--mmdet3d"], "needs the config"),
    ([], "the script is missing"),
])
def test_mmdet3d_usage_errors(cli, argv, expected):
    code, _, stderr = cli(*argv)
    assert code == 2 and expected in stderr


SITE = sysconfig.get_paths()["purelib"]
TORCH = str(Path(torch.__file__).parent)
DYNEXPORT = str(Path(dynexport.__file__).parent)


def test_locator_falls_back_to_the_model_package_without_user_frames():
    frames = [(f"{DYNEXPORT}/pipeline.py", 10),
              (f"{SITE}/mmdet3d/models/detectors/base.py", 20),
              (f"{SITE}/mmcv/ops/modulated_deform_conv.py", 331),
              (f"{DYNEXPORT}/integrations/mmcv_standin.py", 40),
              (f"{TORCH}/_ops.py", 50)]
    where = innermost_user_frame(frames)
    assert (where.file, where.line) == (f"{SITE}/mmcv/ops/modulated_deform_conv.py", 331)


def test_locator_prefers_a_user_frame_over_any_package_frame(tmp_path):
    user = str(tmp_path / "model.py")
    frames = [(user, 7), (f"{SITE}/mmdet3d/models/detectors/base.py", 20), (f"{TORCH}/_ops.py", 5)]
    assert innermost_user_frame(frames).file == user
    assert innermost_user_frame([(f"{TORCH}/nn/modules/conv.py", 3),
                                 (f"{DYNEXPORT}/capture.py", 9)]) is None
