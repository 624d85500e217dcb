"""Coverage preflight: ops a backend cannot lower, named with the user's line, before
converting; raw exporter errors translated into the same records."""

import inspect

import openvino as ov
import pytest
import torch
from rich.console import Console

from dynexport.adapters import torch_onnx
from dynexport.coverage import (
    coverage_table,
    op_coverage,
    translate_backend_error,
    unsupported_ops,
)
from dynexport.custom_ops.registry import OpRegistry
from dynexport.hazards.unsupported_op import unsupported_op_hazard


@torch.library.custom_op("dynexport_test::warp", mutates_args=())
def warp(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@warp.register_fake
def _(x):
    return torch.empty_like(x)


class Mixed(torch.nn.Module):
    def forward(self, pose, m, big):
        y = torch.relu(m)
        e = torch.linalg.matrix_exp(m)  # neither backend has it
        w = warp(y)  # a custom op without translations
        inv = torch.inverse(pose)  # decomposed by dynexport
        too_big = torch.linalg.inv(big)  # beyond the decomposition's 8x8
        return e, w, inv, too_big


def line_of(fragment: str) -> int:
    lines, first = inspect.getsourcelines(Mixed.forward)
    return first + next(i for i, text in enumerate(lines) if fragment in text)


EXP, WARP = "aten.linalg_matrix_exp.default", "dynexport_test.warp.default"
INV, INV_EX = "aten.inverse.default", "aten.linalg_inv_ex.default"


@pytest.fixture(scope="module")
def program():
    args = (torch.randn(2, 4, 4, dtype=torch.float64), torch.randn(3, 3), torch.randn(10, 10))
    return torch.export.export(Mixed(), args)


@pytest.fixture(scope="module")
def rows(program):
    return {row.op: row for row in op_coverage(program)}


@pytest.fixture(scope="module")
def records(program):
    return unsupported_ops(program)


def test_coverage_rows(rows):
    assert not rows[EXP].onnx and not rows[EXP].openvino
    assert not rows[WARP].onnx and not rows[WARP].openvino
    assert rows[INV].onnx and rows[INV].openvino and rows[INV].decomposed_by_dynexport
    big = rows["aten.linalg_inv.default"]
    assert not big.onnx and not big.openvino and not big.decomposed_by_dynexport
    relu = rows["aten.relu.default"]
    assert relu.onnx and relu.openvino and not relu.decomposed_by_dynexport and relu.count == 1
    assert rows[EXP].location.file == __file__
    assert rows[EXP].location.line == line_of("matrix_exp")
    assert rows[EXP].location.code == "e = torch.linalg.matrix_exp(m)  # neither backend has it"


def test_nothing_weakened_the_answer(records):
    assert records.notes == []


def test_unsupported_ops_name_op_backend_and_line(records):
    found = {(r.op, r.backend, r.line) for r in records}
    assert found == {
        (EXP, "onnx", line_of("matrix_exp")), (EXP, "openvino", line_of("matrix_exp")),
        (WARP, "onnx", line_of("warp(y)")), (WARP, "openvino", line_of("warp(y)")),
        # named as each backend sees the declined 10x10 inverse; torch.onnx also lacks the
        # with_effects wrapper of its error check, named by the op it wraps
        (INV_EX, "onnx", line_of("inv(big)")), (INV_EX, "openvino", line_of("inv(big)")),
        ("aten._linalg_check_errors.default", "onnx", line_of("inv(big)")),
    }
    assert all(r.file == __file__ and r.count == 1 for r in records)
    assert records[0].to_json().keys() == {"op", "backend", "count", "file", "line"}


def test_hazards(records):
    hazards = [unsupported_op_hazard(op) for op in records]
    assert len(hazards) == len(records)
    for hazard, record in zip(hazards, records, strict=True):
        assert (hazard.category, hazard.severity) == ("unsupported_op", "error")
        assert (hazard.file, hazard.line, hazard.code) == (record.file, record.line, record.code)
        assert record.op in hazard.message
        assert hazard.fix
    fixes = {r.op: h.fix for r, h in zip(records, hazards, strict=True)}
    assert "8x8" in fixes[INV_EX] and "custom_ops" in fixes[WARP]


def test_coverage_table_renders(rows):
    console = Console(record=True, width=220)
    console.print(coverage_table(list(rows.values())))
    text = console.export_text()
    assert "OpenVINO" in text and "decomposed by dynexport" in text
    exp_line = next(line for line in text.splitlines() if EXP in line)
    assert "✗" in exp_line and f":{line_of('matrix_exp')}" in exp_line


class Inverse(torch.nn.Module):
    def forward(self, a):
        return torch.inverse(a)


@pytest.fixture(scope="module")
def raw_inverse():
    """An undecomposed program: both exporters reject it."""
    return torch.export.export(Inverse(), (torch.randn(4, 4, dtype=torch.float64),))


def test_translate_torch_onnx_error(raw_inverse):
    with pytest.raises(Exception) as info:
        torch.onnx.export(raw_inverse, dynamo=True, verbose=False)
    records = translate_backend_error(info.value, "onnx", raw_inverse)
    assert [(r.op, r.backend) for r in records] == [("aten.linalg_inv_ex.default", "onnx")]


def test_translate_openvino_error(raw_inverse):
    with pytest.raises(Exception) as info:
        ov.convert_model(raw_inverse)
    records = translate_backend_error(info.value, "openvino")
    assert [(r.op, r.backend) for r in records] == [("aten.linalg_inv_ex.default", "openvino")]


def test_translate_locates_ops_present_in_the_program(program):
    message = ("Model wasn't fully converted.\nSummary:\n-- No conversion rule found for "
               f"operations: {EXP}, {WARP}\n-- Conversion is failed for: aten.relu.default\n")
    records = translate_backend_error(RuntimeError(message), "openvino", program)
    assert [(r.op, r.line) for r in records] == [(EXP, line_of("matrix_exp")),
                                                 (WARP, line_of("warp(y)")),
                                                 ("aten.relu.default", line_of("relu"))]


def test_translate_ignores_unrelated_errors():
    assert translate_backend_error(ValueError("shape mismatch"), "onnx") is None


def _warp_onnx(x):
    from onnxscript import opset18 as op

    return op.Add(x, x)


class Warp(torch.nn.Module):
    def forward(self, x):
        return warp(x) + 1


def test_a_scoped_registry_adds_translations():
    program = torch.export.export(Warp(), (torch.randn(2, 3),))
    scoped = OpRegistry()
    scoped.register(warp, onnx=_warp_onnx)
    assert WARP in {r.op for r in unsupported_ops(program, ("onnx",))}  # default registry
    assert WARP not in {r.op for r in unsupported_ops(program, ("onnx",), registry=scoped)}


class Small(torch.nn.Module):
    def forward(self, m):
        return torch.linalg.matrix_exp(m) + 1


@pytest.fixture(scope="module")
def small():
    return torch.export.export(Small(), (torch.randn(3, 3),))


def test_a_failed_onnx_preparation_is_a_note(small, monkeypatch):
    def fails(program, registry):
        raise RuntimeError("cannot decompose\nsecond line")

    monkeypatch.setattr(torch_onnx, "prepare_for_export", fails)
    records = unsupported_ops(small, ("onnx",))
    assert [(r.op, r.backend) for r in records] == [(EXP, "onnx")]
    assert records.notes == ["ONNX coverage is judged on the program as given: torch.onnx "
                             "could not decompose it (RuntimeError: cannot decompose)"]
    rows = op_coverage(small)
    assert rows.notes == records.notes
    console = Console(record=True, width=250)
    console.print(coverage_table(rows))
    assert f"note: {records.notes[0]}" in console.export_text()


def test_a_failed_openvino_preparation_is_a_note(small, monkeypatch):
    def fails(self, program):
        raise RuntimeError("no table")

    monkeypatch.setattr(OpRegistry, "openvino_decoder_input", fails)
    records = unsupported_ops(small, ("openvino",))
    assert [(r.op, r.backend) for r in records] == [(EXP, "openvino")]
    assert len(records.notes) == 1 and records.notes[0].startswith("OpenVINO coverage is judged")


def test_an_unexpected_error_is_not_swallowed(small, monkeypatch):
    def broken(program, registry):
        raise TypeError("an internal API changed")

    monkeypatch.setattr(torch_onnx, "prepare_for_export", broken)
    with pytest.raises(TypeError, match="internal API changed"):
        unsupported_ops(small, ("onnx",))
