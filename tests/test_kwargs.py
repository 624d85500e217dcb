"""Issue #14 item 1: the mmdet calling convention and other non-tensor keyword arguments
convert and verify on every backend; the OpenVINO model has one Parameter per tensor leaf, of
static rank, named as in the program."""

import openvino as ov
from helpers import read_report

BEVDET_LIKE = '''
import torch
from torch import nn

class BEVDetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.img_backbone = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.cam_embed = nn.Linear(12, 8)
    def forward(self, return_loss=True, **kwargs):
        return self.forward_train(**kwargs) if return_loss else self.forward_test(**kwargs)
    def forward_train(self, img_inputs, gt_occ=None):
        raise NotImplementedError
    def forward_test(self, img_inputs, **kwargs):
        imgs, rots, trans = img_inputs
        b, n = imgs.shape[:2]
        feats = self.img_backbone(imgs.flatten(0, 1)).mean((2, 3)).view(b, n, -1)
        cam = self.cam_embed(torch.cat([rots.flatten(2), trans], dim=-1))
        return (feats * cam).sum(1)

def get_model():
    return BEVDetLike().eval()

def get_inputs():
    return {"img_inputs": (torch.randn(1, 2, 3, 32, 32), torch.randn(1, 2, 3, 3),
                           torch.randn(1, 2, 3)),
            "return_loss": False}
'''

MANY_KINDS = '''
import torch
from torch import nn

class Mixed(nn.Module):
    def forward(self, x, feats, mode="train", scale=1, extras=None, flags=(True,)):
        out = x * scale if mode == "test" else x
        if extras is None and flags[0]:
            out = out + feats["a"] + feats["b"][0] * feats["b"][1]
        return {"out": out, "sum": out.sum(-1)}

def get_model():
    return Mixed().eval()

def get_inputs():
    return ((torch.randn(2, 4),),
            {"feats": {"a": torch.randn(2, 4), "b": [torch.randn(2, 4), torch.randn(2, 4)]},
             "mode": "test", "scale": 3, "extras": None, "flags": (True,)})
'''


def _check(cli, write_script, tmp_path, source, tensors):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, write_script(source))
    assert code == 0, stdout
    report = read_report(out)
    assert all(v["passed"] for v in report["verification"])
    assert {(v["runtime"], v["inputs"]) for v in report["verification"]} == {
        (r, i) for r in ("onnxruntime", "openvino") for i in ("example", "probe")}
    model = ov.Core().read_model(out / "openvino" / "model.xml")
    parameters = model.get_parameters()
    assert len(parameters) == tensors
    assert all(p.get_partial_shape().rank.is_static for p in parameters)
    return report, [p.get_friendly_name() for p in parameters]


def test_mmdet_calling_convention_converts_and_verifies(cli, write_script, tmp_path):
    report, names = _check(cli, write_script, tmp_path, BEVDET_LIKE, tensors=3)
    assert names == ["img_inputs_0", "img_inputs_1", "img_inputs_2"]
    assert any("return_loss=False" in item["what"] for item in report["handled"])


def test_every_kind_of_non_tensor_keyword_argument(cli, write_script, tmp_path):
    report, _ = _check(cli, write_script, tmp_path, MANY_KINDS, tensors=4)
    handled = " ".join(item["what"] for item in report["handled"])
    assert "mode='test'" in handled and "scale=3" in handled and "extras=None" in handled
