"""The Report composes records that render themselves: every section appears in every
rendering, user text is escaped in HTML, and `ok` means what contract §3 says."""

import itertools

import jsonschema
import pytest
import torch
from helpers import SCHEMA

import dynexport
from dynexport.benchmark import BenchmarkRecord
from dynexport.hazards.records import Handled, Hazard, UnsupportedOp
from dynexport.precision import PrecisionResult, VariantComparison
from dynexport.report import Report
from dynexport.serving import ServingRecord
from dynexport.stage import StageRecord
from dynexport.verify import Verification

NASTY = "if x.sum() > 0 and '<script>alert(1)</script>' & y:"


def _full_report() -> Report:
    return Report(
        script="model.py", capture_strategy="draft",
        stages=[StageRecord("load", "ok", 0.1), StageRecord("onnx", "failed", 1.0,
                                                             error="boom <b>&</b>")],
        hazards=[Hazard("data_dependent_branch", "error", "/src/model.py", 7, NASTY,
                        "message & <i>more</i>", "fix <it>", detail="torch <says>")],
        handled=[Handled("`aten.linalg_inv_ex.default` decomposed", "/src/model.py", 9,
                         "torch.inverse(m)")],
        unsupported_ops=[UnsupportedOp("mylib.op.default", "onnx", 2, "/src/model.py", 11)],
        verification=[Verification("openvino", "probe", "labels", 3.0, 0.2, False, 0.95)],
        benchmark=[BenchmarkRecord("eager", 12.5, 10, 11.0, 14.0)],
        precision=PrecisionResult("bf16", None, {"INFERENCE_PRECISION_HINT": "bf16"}, "bf16",
                                  10.0, 4.0, 2.5, 5,
                                  comparisons=[VariantComparison("example", "logits", 0.01, 0.99)]),
        serving=[ServingRecord("ovms", "out/ovms", "out/ovms/model/1/model.xml")])


def test_every_section_renders_in_every_format():
    report = _full_report()
    titles = [section.title for section in report.sections()]
    assert titles == ["Stages", "Hazards", "Handled by dynexport", "Unsupported ops",
                      "Verification against eager PyTorch", "Precision bf16 against f32",
                      "Serving", "Benchmark"]
    markdown, page = report.to_markdown(), report._repr_html_()
    for title in titles:
        assert f"## {title}" in markdown and f"<h4>{title}</h4>" in page
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report)
    text = console.export_text()
    assert all(title.split(" ")[0] in text for title in titles)
    assert "95.000 %" in markdown  # label agreement of the integer output
    jsonschema.validate(report.to_json(), SCHEMA)


def test_html_escapes_user_code_and_messages():
    page = _full_report()._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&amp; y" in page and "<b>&</b>" not in page and "&lt;says&gt;" in page


@pytest.mark.parametrize("stage, verified, severity",
                         list(itertools.product(["ok", "failed", "skipped"], [True, False],
                                                ["warning", "error", None])))
def test_ok_truth_table(stage, verified, severity):
    report = Report(stages=[StageRecord("onnx", stage)],
                    verification=[Verification("onnxruntime", "example", "0", 0, 0, verified)],
                    hazards=[Hazard("graph_break", severity, None, None, None, "m", "f")]
                    if severity else [])
    assert report.ok == (stage != "failed" and verified and severity != "error")


def test_explain_report_validates_against_the_schema():
    class Item(torch.nn.Module):
        def forward(self, x):
            return x * x.sum().item()

    data = dynexport.explain(Item(), (torch.randn(3),)).to_json()
    jsonschema.validate(data, SCHEMA)
    assert [h["category"] for h in data["hazards"]] == ["tensor_to_python"]


def test_a_disagreement_is_never_rounded_up_to_100_percent():
    from dynexport.compare import percent

    assert percent(0.99998) == "99.998 %" and percent(1.0) == "100 %" and percent(None) == ""
