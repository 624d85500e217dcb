"""Issue #14: the `ops` table and explain() name which op-kit ops a model uses and how each
backend lowers them, at the user's line."""

import torch
from rich.console import Console

import dynexport
from dynexport.coverage import coverage_table
from dynexport.custom_ops import deform_conv2d, nms
from dynexport.pipeline import script_coverage


class UsesTheKit(torch.nn.Module):
    def forward(self, x, offset, weight, boxes, scores):
        features = deform_conv2d(x, offset, weight)  # kit: deform_conv2d
        keep = nms(boxes, scores, 0.5)  # kit: nms
        return features, boxes[keep]


ARGS = (torch.randn(1, 2, 5, 5), torch.zeros(1, 18, 3, 3), torch.randn(4, 2, 3, 3),
        torch.rand(10, 4) * 10, torch.rand(10))


def _line(marker: str) -> int:
    lines = open(__file__).read().splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.endswith(marker))


def test_explain_names_kit_ops_and_their_lowerings_at_the_call():
    report = dynexport.explain(UsesTheKit(), ARGS)
    kit = {item.line: item.what for item in report.handled if "op kit" in item.what}
    deform, kept = kit[_line("# kit: deform_conv2d")], kit[_line("# kit: nms")]
    assert "dynexport.deform_conv2d.default" in deform
    assert "DeformConv" in deform and "DeformableConvolution" in deform
    assert "NonMaxSuppression" in kept and "dynexport.nms.default" in kept
    assert report.hazards == []
    # kit ops are op rewrites (what a sweep's `dynexport fixed` lists); the keyword call is not
    rewrites = {item.line for item in report.handled if item.op_rewrite}
    assert rewrites == set(kit)
    assert [item.to_json().get("op_rewrite") for item in report.handled
            if item.line in kit] == [True, True]


def test_ops_table_has_the_lowering_of_kit_ops(write_script):
    script = write_script(f'''
import torch
import sys
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
from test_kit_in_reports import ARGS, UsesTheKit

def get_model():
    return UsesTheKit()

def get_inputs():
    return ARGS
''')
    rows = {row.op: row for row in script_coverage(script, [])}
    assert "DeformConv" in rows["dynexport.deform_conv2d.default"].lowering
    assert rows["aten.index.Tensor"].lowering is None
    console = Console(record=True, width=250)
    console.print(coverage_table(list(rows.values())))
    assert "NonMaxSuppression-9" in console.export_text()
