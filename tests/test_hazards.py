"""Hazard detection (contract §4): one small model per category, at the right line, with a fix."""

import inspect

import numpy as np
import pytest
import torch

import dynexport

HERE = __file__


def line_of(marker: str) -> int:
    """The line of this file that carries the comment `# <marker>`."""
    lines = inspect.getsource(inspect.getmodule(line_of)).splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith(f"# {marker}"))


def hazards(model, *args, **kwargs):
    return dynexport.explain(model, args, kwargs).hazards


def only(found, category):
    matching = [h for h in found if h.category == category]
    assert len(matching) == 1, found
    hazard = matching[0]
    assert hazard.file == HERE and hazard.fix and hazard.message
    return hazard


class BranchOnData(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # branch-on-data
            return x + 1
        return x - 1


class BranchOnMaskedLength(torch.nn.Module):
    def forward(self, x):
        kept = x[x > 0]
        if len(kept) == 0:  # len-kept
            return x
        return x * kept.mean()


class BranchOnMaskLength(torch.nn.Module):
    def forward(self, x):
        kept = x > 0
        if len(kept) == 0:  # len-of-mask
            return x
        return x * kept


class PoolsMaskedPointsIntoAGrid(torch.nn.Module):
    """Masked selection feeding a fixed-size grid: sizes after the scatter are static."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x, cells):
        kept = x[:, 0] > 0
        grid = torch.zeros(8, 4).index_add(0, cells[kept], x[kept])
        return self.norm(grid)


class ItemFeedsComputation(torch.nn.Module):
    def forward(self, x):
        peak = x.abs().max().item()  # item-on-data
        return x / peak


class IntOfConstantBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("grid_size", torch.tensor([200, 200, 1]))

    def forward(self, x):
        layers = int(self.grid_size[2])  # int-of-buffer
        return x.repeat(layers, 1)


class NumpyInside(torch.nn.Module):
    def forward(self, x):
        y = x.cpu().numpy()  # numpy-inside
        return torch.from_numpy(y * 2)


class NumpyOutput(torch.nn.Module):
    def forward(self, x):
        logits = x * 2
        return logits.argmax(-1).cpu().numpy().astype(np.uint8)  # numpy-output


class GraphBreak(torch.nn.Module):
    def forward(self, x):
        torch._dynamo.graph_break()  # graph-break
        return x * 2


class PinsItsBatch(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] == 4:  # pins-batch
            return x * 2
        return x


class Clean(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x, scale: float = 1.0):
        return self.linear(x).relu() * scale


def test_data_dependent_branch():
    hazard = only(hazards(BranchOnData(), torch.ones(3)), "data_dependent_branch")
    assert hazard.line == line_of("branch-on-data") and hazard.severity == "error"
    assert "torch.where" in hazard.fix or "torch.cond" in hazard.fix


def test_len_of_a_masked_tensor_is_a_data_dependent_branch():
    hazard = only(hazards(BranchOnMaskedLength(), torch.randn(8)), "data_dependent_branch")
    assert hazard.line == line_of("len-kept") and hazard.code == "if len(kept) == 0:  # len-kept"
    assert "torch._check" in hazard.fix


def test_length_of_a_mask_is_a_dead_branch_warning():
    hazard = only(hazards(BranchOnMaskLength(), torch.randn(8)), "tensor_to_python")
    assert hazard.line == line_of("len-of-mask") and hazard.severity == "warning"
    assert "dead" in hazard.fix.lower()


def test_static_sizes_after_a_fixed_size_scatter_are_not_hazards():
    model = PoolsMaskedPointsIntoAGrid().eval()
    assert hazards(model, torch.randn(16, 4), torch.randint(0, 8, (16,))) == []


def test_item_on_data_that_strict_capture_computes_in_the_graph_is_a_warning():
    """Strict capture traces `x.abs().max().item()` into the program (an unbacked value
    computed for each input; both runtimes verified on the probe, issue #26): not baked. Where
    the value is baked, the probe catches it (test_cli's baked `.item()`, an error)."""
    hazard = only(hazards(ItemFeedsComputation(), torch.randn(5)), "tensor_to_python")
    assert hazard.line == line_of("item-on-data") and hazard.severity == "warning"
    assert "compute it for each input" in hazard.message


def test_int_of_a_constant_buffer_is_only_a_warning():
    found = hazards(IntOfConstantBuffer(), torch.randn(1, 3))
    hazard = only(found, "tensor_to_python")
    assert hazard.line == line_of("int-of-buffer") and hazard.severity == "warning"
    assert not any(h.severity == "error" for h in found)


def test_numpy_conversion():
    hazard = only(hazards(NumpyInside(), torch.randn(3)), "numpy_conversion")
    assert hazard.line == line_of("numpy-inside")


def test_numpy_output_is_a_non_tensor_output_and_a_numpy_conversion():
    found = hazards(NumpyOutput(), torch.randn(2, 5))
    assert only(found, "non_tensor_output").line == line_of("numpy-output")
    assert only(found, "numpy_conversion").line == line_of("numpy-output")


def test_graph_break_is_a_warning_when_non_strict_capture_succeeds():
    report = dynexport.explain(GraphBreak(), (torch.randn(3),))
    assert report.capture_strategy == "non_strict"
    hazard = only(report.hazards, "graph_break")
    assert hazard.line == line_of("graph-break") and hazard.severity == "warning"


def test_shape_specialization():
    batch = torch.export.Dim("batch", max=64)
    report = dynexport.explain(PinsItsBatch(), (torch.randn(4, 3),),
                               dynamic_shapes=({0: batch},))
    hazard = only(report.hazards, "shape_specialization")
    assert hazard.line == line_of("pins-batch")


@pytest.mark.parametrize("kwargs", [{}, {"scale": 2.0}])
def test_clean_model_has_no_hazard(kwargs):
    report = dynexport.explain(Clean(), (torch.randn(2, 3),), kwargs)
    assert report.hazards == [] and report.ok


class ThreeHazards(torch.nn.Module):
    def forward(self, x):
        count = int((x > 0).sum())  # three-1
        if x.mean() > 0:  # three-2
            x = x * 2
        return (x * count).numpy()  # three-3


def test_three_hazards_in_one_pass_in_line_order():
    found = hazards(ThreeHazards(), torch.randn(6))
    summary = [(h.category, h.line) for h in found]
    assert ("tensor_to_python", line_of("three-1")) in summary
    assert ("data_dependent_branch", line_of("three-2")) in summary
    assert ("numpy_conversion", line_of("three-3")) in summary
    assert [h.line for h in found] == sorted(h.line for h in found)
    assert summary == [(h.category, h.line) for h in hazards(ThreeHazards(), torch.randn(6))]


def test_report_renders_for_people_and_notebooks():
    report = dynexport.explain(ThreeHazards(), (torch.randn(6),))
    html = report._repr_html_()
    assert "data_dependent_branch" in html and "three-2" in html
    # torch's own message is kept, folded away
    assert "<details>" in dynexport.explain(GraphBreak(), (torch.randn(3),))._repr_html_()
    assert "three-2" in str(report)
    data = report.to_json()
    assert not data["ok"] and len(data["hazards"]) == len(report.hazards)


def _line_in(path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_seed_patterns_all_reported_in_one_cli_run(cli, tmp_path):
    from helpers import REPO, read_report

    script = REPO / "examples" / "seed_patterns.py"
    code, _, _ = cli("--out", tmp_path, script)
    assert code == 1
    found = {(h["category"], h["line"], h["severity"]) for h in read_report(tmp_path)["hazards"]}
    expected = {
        ("tensor_to_python", _line_in(script, "layers = int(self.grid_size[2])"), "warning"),
        ("data_dependent_branch", _line_in(script, "if len(cells[kept]) == 0:"), "error"),
        ("tensor_to_python", _line_in(script, "scale = int(counts.max())"), "error"),
        ("numpy_conversion", _line_in(script, "return occ.cpu().numpy()"), "error"),
        ("non_tensor_output", _line_in(script, "return occ.cpu().numpy()"), "error"),
    }
    assert found == expected


def test_seed_patterns_rewrite_converts_cleanly(cli, tmp_path):
    from helpers import REPO, read_report

    code, _, _ = cli("--out", tmp_path, REPO / "examples" / "seed_patterns.py", "--fixed")
    assert code == 0
    report = read_report(tmp_path)
    assert report["hazards"] == [] and all(v["passed"] for v in report["verification"])


def test_draft_failure_frames_resolve_through_torchs_intern_table():
    """A draft report only names the files first interned during its own export; frames of
    files interned earlier in the process resolve through torch's intern table, and a frame
    that resolves nowhere is dropped rather than reported at a bogus file."""
    from types import SimpleNamespace

    from torch._logging import structured

    from dynexport.hazards import data_dependent_branch
    from dynexport.hazards.evidence import Evidence

    index = structured.intern_string(HERE)
    frame = {"filename": index, "line": line_of("branch-on-data"), "name": "forward"}
    failure = SimpleNamespace(failure_type=SimpleNamespace(name="DATA_DEPENDENT_ERROR"),
                              data={"user_stack": [frame], "expr": "u0 > 0", "result": "True"})

    def found(failures):
        report = SimpleNamespace(str_to_filename={}, failures=failures)
        return data_dependent_branch.from_draft(
            Evidence(capture=SimpleNamespace(draft_report=report)))

    (hazard,) = found([failure])
    assert (hazard.file, hazard.line, hazard.category) == (
        HERE, line_of("branch-on-data"), "data_dependent_branch")
    lost = dict(frame, filename=10**9)
    assert found([SimpleNamespace(failure_type=failure.failure_type,
                                  data=dict(failure.data, user_stack=[lost]))]) == []
