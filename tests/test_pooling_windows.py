"""Pools in ceil mode whose windows run past the map (dynexport/decompositions/pooling.py):
where a raw backend fails or differs from PyTorch, dynexport pads explicitly and pools in
floor mode, and both runtimes match eager; ordinary pools are kept as captured."""

import numpy as np
import onnx
import openvino as ov
import pytest
import torch
import torch.nn.functional as F

import dynexport
from dynexport.conversion import replaced_ops
from dynexport.decompositions import decompose
from dynexport.runtimes import OnnxRuntimeRunner, OpenVINORunner

pytestmark = pytest.mark.slow  # converts through both exporters


class Pool(torch.nn.Module):
    def __init__(self, pool, **options):
        super().__init__()
        self.pool, self.options = pool, options

    def forward(self, x):
        return self.pool(x, **self.options) * 2  # the pool line


def _input(*size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


# (pool, options, spatial size): each a case where a raw backend fails or differs
FIXED = {
    "avg kernel over the whole map (EfficientNet)": (F.avg_pool2d, dict(
        kernel_size=320, ceil_mode=True), (2, 2)),
    "avg kernel larger than the padded map": (F.avg_pool2d, dict(
        kernel_size=7, stride=2, padding=3, ceil_mode=True, count_include_pad=True), (2, 2)),
    "avg count_include_pad, last window past the padding": (F.avg_pool2d, dict(
        kernel_size=4, stride=3, padding=2, ceil_mode=True, count_include_pad=True), (5, 7)),
    "avg without count_include_pad, last window dropped": (F.avg_pool2d, dict(
        kernel_size=4, stride=3, padding=2, ceil_mode=True, count_include_pad=False), (5, 7)),
    "avg divisor_override": (F.avg_pool2d, dict(
        kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=5), (5, 7)),
    "avg 1-D, kernel larger than the map": (F.avg_pool1d, dict(
        kernel_size=9, ceil_mode=True, count_include_pad=False), (3,)),
    "avg 3-D, last window past the padding": (F.avg_pool3d, dict(
        kernel_size=3, stride=2, padding=1, ceil_mode=True), (4, 5, 3)),
    "max last window starts in the padding": (F.max_pool2d, dict(
        kernel_size=2, stride=2, padding=1, ceil_mode=True), (5, 7)),
    "max kernel larger than the map": (F.max_pool2d, dict(
        kernel_size=9, ceil_mode=True), (2, 2)),
    "max 1-D, kernel larger than the map": (F.max_pool1d, dict(
        kernel_size=5, ceil_mode=True), (3,)),
    "max 3-D, kernel larger than the map": (F.max_pool3d, dict(
        kernel_size=5, ceil_mode=True), (2, 3, 2)),
}


@pytest.mark.parametrize("name", FIXED)
def test_dynexport_matches_eager_in_both_runtimes(name, tmp_path):
    pool, options, size = FIXED[name]
    model = Pool(pool, **options)
    x = _input(*size)
    captured = torch.export.export(model, (x,),
                                   dynamic_shapes=({0: torch.export.Dim("batch")},))
    program = decompose(captured)  # dynexport.export's last step
    assert [op for op, _ in replaced_ops(captured, program)] == [f"aten.{pool.__name__}.default"]
    onnx_runner = OnnxRuntimeRunner(dynexport.to_onnx(program, tmp_path / "model.onnx"), 1)
    openvino_runner = OpenVINORunner(dynexport.to_openvino(program))
    for inputs in (x, torch.randn(5, 3, *size)):  # another batch: the batch stays dynamic
        expected = model(inputs).numpy()  # eager PyTorch
        for runner in (onnx_runner, openvino_runner):
            got = runner.run([inputs.numpy()])[0]
            assert got.shape == expected.shape, runner.name
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=runner.name)


def _raw_onnx(model, x, tmp_path) -> np.ndarray:
    path = tmp_path / "raw.onnx"
    torch.onnx.export(torch.export.export(model, (x,)), (), dynamo=True).save(path)
    onnx.checker.check_model(str(path), full_check=True)  # what dynexport.to_onnx checks
    return OnnxRuntimeRunner(path, 1).run([x.numpy()])[0]


def _raw_openvino(model, x) -> np.ndarray:
    compiled = ov.Core().compile_model(ov.convert_model(torch.export.export(model, (x,))), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled([x.numpy()])[compiled.outputs[0]]


@pytest.mark.parametrize("name, route, failure", [
    ("avg kernel over the whole map (EfficientNet)", "openvino", "larger than the data shape"),
    ("max kernel larger than the map", "openvino", "MaxPool node"),
    ("avg count_include_pad, last window past the padding", "openvino", "differs"),
    ("avg divisor_override", "openvino", "avg_pool2d"),
    ("avg divisor_override", "onnx", "differs"),
    ("max last window starts in the padding", "onnx", "ShapeInferenceError"),
])
def test_without_dynexport_the_raw_route_fails_or_differs(name, route, failure, tmp_path):
    pool, options, size = FIXED[name]
    model, x = Pool(pool, **options), _input(*size)
    expected = model(x).numpy()
    try:
        got = _raw_onnx(model, x, tmp_path) if route == "onnx" else _raw_openvino(model, x)
    except Exception as exc:  # noqa: BLE001 - the raw tools raise their own types
        assert failure in str(exc)
        return
    assert failure == "differs"
    assert np.abs(got - expected).max() > 1e-2


@pytest.mark.parametrize("pool, options, size", [
    (F.max_pool2d, dict(kernel_size=3, stride=2, ceil_mode=True), (5, 7)),  # GoogLeNet's
    (F.avg_pool2d, dict(kernel_size=3, stride=2, padding=1), (5, 7)),
    (F.avg_pool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                        count_include_pad=False), (5, 7)),
])
def test_pools_the_backends_convert_are_kept(pool, options, size):
    program = torch.export.export(Pool(pool, **options), (_input(*size),))
    decomposed = decompose(program)
    assert _calls(decomposed, pool) == _calls(program, pool)  # the same call, unchanged
    assert replaced_ops(program, decomposed) == []


def _calls(program, pool) -> list[str]:
    return [str(node.args) for node in program.graph.nodes
            if str(node.target) == f"aten.{pool.__name__}.default"]


def test_a_rewritten_pool_is_reported_at_the_users_line():
    pool, options, size = FIXED["max last window starts in the padding"]
    model = torch.nn.Sequential(Pool(pool, **options))  # its input is named `input`
    program = torch.export.export(model, (_input(*size),))
    decomposed = decompose(program)
    lines = open(__file__).read().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.endswith("# the pool line"))
    assert [(op, location.line) for op, location in replaced_ops(program, decomposed)] == [
        ("aten.max_pool2d.default", line)]
    x = _input(*size, seed=1)
    torch.testing.assert_close(decomposed.module()(x), model(x), rtol=0, atol=0)
