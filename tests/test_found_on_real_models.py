"""Issue #16, found on real models: a native crash in a converter (the conversion stage's
side: tests/test_cli.py's failed-OpenVINO test, `aborts`), a batch-1 example of a dynamic
batch, and messages that misled. Each as a small model of the same kind."""

import os

import numpy as np
import torch
from helpers import REPO, read_report

from dynexport.hazards.unsupported_op import fix_for
from dynexport.isolation import NativeCrash, run_isolated
from dynexport.verify import Comparison

BATCH_ONE = """
import torch
from torch import nn

class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

def get_model():
    torch.manual_seed(0)
    return Classifier().eval()

def get_inputs():
    return (torch.randn(1, 3, 16, 16),)

def get_probe_inputs():
    return (torch.randn(4, 3, 16, 16),)
{dynamic}
"""


def test_isolated_step_returns_results_and_reraises_errors():
    assert run_isolated(lambda: {"answer": np.arange(3)}, "a step")["answer"].tolist() == [0, 1, 2]
    try:
        run_isolated(lambda: (_ for _ in ()).throw(ValueError("bad shape")), "a step")
    except ValueError as exc:
        assert "bad shape" in str(exc)
    else:
        raise AssertionError("the child's exception was lost")
    try:
        run_isolated(lambda: os.kill(os.getpid(), 11), "segfaulting step")
    except NativeCrash as crash:
        assert "SIGSEGV" in str(crash) and "segfaulting step" in str(crash)
    else:
        raise AssertionError("a killed child must raise NativeCrash")


def test_batch_one_example_keeps_a_declared_dynamic_batch(cli, write_script, tmp_path):
    dynamic = 'dynamic_shapes = ({0: torch.export.Dim("batch")},)'
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, write_script(BATCH_ONE.format(dynamic=dynamic)))
    assert code == 0, stdout
    report = read_report(out)
    assert {(v["inputs"], v["passed"]) for v in report["verification"]} == {
        ("example", True), ("probe", True)}
    assert not report["hazards"]
    assert any("x.0" in item["what"] and "size-obliviously" in item["what"]
               for item in report["handled"])


def test_runtime_error_keeps_its_decisive_sentence(cli, write_script, tmp_path):
    out = tmp_path / "out"  # no dynamic_shapes: the models accept batch 1 only
    code, _, _ = cli("--out", out, write_script(BATCH_ONE.format(dynamic="")))
    assert code == 1
    report = read_report(out)
    probe = {v["runtime"]: v for v in report["verification"] if v["inputs"] == "probe"}
    assert "Got: 4 Expected: 1" in probe["onnxruntime"]["error"]
    assert (out / "report.md").read_text().count("Got: 4 Expected: 1") >= 1


def test_shape_mismatch_names_both_shapes():
    comparison = Comparison.of(np.ones((300, 4), np.float32), np.ones((0, 4), np.float32))
    assert not comparison.passed
    assert comparison.reason == "shape (0, 4) instead of eager's (300, 4)"


def test_shape_arithmetic_is_not_called_a_custom_op():
    text = fix_for("torch.sym_min", "openvino")
    assert "custom op" not in text and "symbolic sizes" in text
    assert "custom op" in fix_for("mylib.swish.default", "onnx")


def test_a_declined_decomposition_gets_its_own_familys_fix():
    """Found on a lidar scatter (`canvas[:, ys, xs] = v` failing in OpenVINO): every op of the
    decomposition table got the inverse/det fix."""
    from dynexport.coverage import op_name
    from dynexport.decompositions import inverse, scatter, unique

    index_put = fix_for("aten.index_put.default", "openvino")
    assert index_put == scatter.DECLINED and "inverse" not in index_put
    assert "flat integer index" in index_put
    assert fix_for("aten._unique2.default", "onnx") == unique.DECLINED
    for op in (torch.ops.aten.linalg_inv_ex.default, torch.ops.aten.linalg_solve_ex.default):
        assert fix_for(op_name(op), "openvino") == inverse.DECLINED
    assert fix_for("aten._linalg_check_errors.default", "onnx") == inverse.DECLINED


def test_attribute_reads_of_a_masked_tensor_are_not_branches_on_its_length():
    import dynexport

    class Filters(torch.nn.Module):
        def forward(self, boxes, scores):
            kept = boxes[scores > 0.5]
            if kept.is_quantized:  # torchvision's nms starts like this
                kept = kept.dequantize()
            return kept * 2

    report = dynexport.explain(Filters(), (torch.rand(20, 4), torch.rand(20)))
    flagged = [h for h in report.hazards if "is_quantized" in (h.code or "")]
    assert flagged == []


def test_a_mistake_in_dynexports_own_code_is_reported_as_a_dynexport_bug(cli, tmp_path,
                                                                         monkeypatch):
    import dynexport.stages.capture

    # A capture that returns something else than a Capture: decompose then trips inside
    # dynexport's own code (conversion.py), which must be called a dynexport bug.
    monkeypatch.setattr(dynexport.stages.capture, "capture", lambda *args, **kwargs: object())
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, "--debug", REPO / "examples" / "convnet.py")
    assert code == 1
    stages = {s["name"]: s for s in read_report(out)["stages"]}
    error = stages["decompose"]["error"]
    assert error.startswith("dynexport bug: AttributeError") and "not your model" in error
    assert (out / "traceback_decompose.txt").read_text().count("conversion.py") >= 1


EAGER_ONLY_BRANCH = """
import torch

class Masked(torch.nn.Module):
    def forward(self, x, mask):
        if not torch.compiler.is_exporting() and mask.all():  # transformers' masking_utils
            return x
        return x * mask

def get_model():
    return Masked()

def get_inputs():
    return (torch.randn(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))

def get_probe_inputs():
    return (torch.randn(2, 4), torch.ones(2, 4, dtype=torch.long))
"""


def test_a_branch_export_never_evaluates_is_a_warning_not_an_error(cli, write_script, tmp_path):
    out = tmp_path / "out"  # found on transformers' BERT (#14 zoo): raw tools pass, so must we
    code, stdout, _ = cli("--out", out, write_script(EAGER_ONLY_BRANCH))
    assert code == 0, stdout
    (hazard,) = read_report(out)["hazards"]
    assert (hazard["category"], hazard["severity"], hazard["line"]) == (
        "data_dependent_branch", "warning", 6)
    assert "did not evaluate" in hazard["message"]
