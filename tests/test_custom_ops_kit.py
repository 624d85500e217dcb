"""The custom-op kit with a user's op: an opaque (numpy) kernel, fake kernel, autograd,
decomposition, ONNX translation and OpenVINO conversion in one place, as README.md shows;
ops that lack translations, reported before conversion; and scoped registries, so that this
file's ops never reach conversions that use the default registry."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from torch import Tensor

import dynexport
from dynexport.coverage import unsupported_ops
from dynexport.custom_ops import registry
from dynexport.hazards.unsupported_op import unsupported_op_hazard

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
CALLS: Counter = Counter()  # which translation each conversion used
# This file's registry: the built-in ops (its parent) plus the test ops registered below.
KIT = registry.OpRegistry(parent=registry.default_registry())


# --- a user's op, written with the kit -----------------------------------------------------------

@torch.library.custom_op("kit_test::swish", mutates_args=())
def swish(x: Tensor, beta: float) -> Tensor:
    # numpy stands in for a compiled extension: no exporter can trace through it
    a = x.detach().numpy()
    return torch.from_numpy(a / (1.0 + np.exp(-beta * a)))


@swish.register_fake
def _(x, beta):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.beta = inputs[1]


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    s = torch.sigmoid(ctx.beta * x)
    return grad * (s + ctx.beta * x * s * (1 - s)), None


swish.register_autograd(_backward, setup_context=_setup)


def _swish_decomposition(x, beta):
    return x * torch.sigmoid(beta * x)


def _swish_onnx(x, beta: float):
    from onnxscript import opset18 as op

    CALLS["onnx"] += 1
    return op.Mul(x, op.Sigmoid(op.Mul(x, op.CastLike(op.Constant(value_float=beta), x))))


def _swish_openvino(context):
    import openvino.opset15 as ops

    CALLS["openvino"] += 1
    x = context.get_input(0)
    beta = ops.convert_like(context.get_input(1), x)
    return [ops.multiply(x, ops.sigmoid(ops.multiply(x, beta))).output(0)]


SWISH = KIT.register(swish, decomposition=_swish_decomposition, onnx=_swish_onnx,
                     openvino=_swish_openvino)


class Net(torch.nn.Module):
    def forward(self, x):
        return swish(x * 2, 1.5) + 1


def _example(rows):
    return (torch.randn(rows, 5, generator=torch.Generator().manual_seed(rows)),)


@pytest.fixture(scope="module")
def program():
    return dynexport.export(Net(), _example(3),
                            dynamic_shapes=({0: torch.export.Dim("rows", min=1)},))


# --- eager ---------------------------------------------------------------------------------------

def test_kernel_and_autograd():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(swish(x, 0.7), x * torch.sigmoid(0.7 * x))
    assert torch.autograd.gradcheck(lambda t: swish(t, 0.7), (x,))


def test_registered_ops_lists_what_each_op_has():
    ops = {rec.name: rec for rec in KIT.ops()}
    assert ops["kit_test.swish.default"] is SWISH
    for name in ("kit_test.swish.default", "dynexport.bev_pool_v2.default"):
        rec = ops[name]
        assert rec.has_onnx and rec.has_openvino and rec.has_decomposition
    assert KIT.onnx_translation_table()[torch.ops.kit_test.swish.default] is _swish_onnx
    assert len(KIT.openvino_extensions()) == \
        len(registry.default_registry().openvino_extensions()) + 1  # swish's


def test_test_ops_stay_out_of_the_default_registry():
    default = registry.default_registry()
    names = {rec.name for rec in default.ops()}
    assert "dynexport.bev_pool_v2.default" in names
    assert not any(name.startswith("kit_test.") for name in names)
    assert swish not in default and swish in KIT
    assert torch.ops.kit_test.swish.default not in registry.onnx_translation_table()
    assert registry.registered_ops() == default.ops()


def test_an_op_registers_once_per_registry():
    with pytest.raises(ValueError, match="already registered"):
        KIT.register("kit_test::swish")
    with pytest.raises(ValueError, match="already registered"):  # the parent has it
        KIT.register("dynexport::bev_pool_v2")
    # another registry may register it again; its decomposition kernel is process-global, so
    # only the same decomposition is accepted
    other = registry.OpRegistry()
    assert other.register(swish, decomposition=_swish_decomposition).op is SWISH.op
    with pytest.raises(ValueError, match="decomposition: .*another decomposition"):
        registry.OpRegistry().register(swish, decomposition=lambda x, beta: x)


def test_scoped_registry_sees_its_parent_and_copy_is_a_snapshot():
    parent = registry.OpRegistry()
    child = registry.OpRegistry(parent=parent)
    snapshot = parent.copy()
    parent.register(untranslated)  # registered after the child and the copy were made
    assert untranslated in child and untranslated not in snapshot
    assert [rec.op for rec in child.ops()] == [torch.ops.kit_test.untranslated.default]
    child.register(onnx_only, onnx=_abs_onnx)
    assert onnx_only not in parent
    assert [rec.name for rec in child.copy().ops()] == [
        "kit_test.untranslated.default", "kit_test.onnx_only.default"]


def test_arguments_are_checked(program, tmp_path):
    with pytest.raises(TypeError, match="onnx: expected a callable"):
        registry.OpRegistry().register(swish, onnx="Mul")
    with pytest.raises(TypeError, match="op: expected a torch op"):
        registry.OpRegistry().register(42)
    with pytest.raises(TypeError, match="parent: expected an OpRegistry"):
        registry.OpRegistry(parent={})
    with pytest.raises(TypeError, match="registry: expected an OpRegistry"):
        dynexport.to_onnx(program, tmp_path / "x.onnx", registry=[SWISH])
    with pytest.raises(TypeError, match="registry: expected an OpRegistry"):
        dynexport.to_openvino(program, registry="default")


# --- conversions ---------------------------------------------------------------------------------

def _onnxruntime(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _openvino(model, x):
    return ov.Core().compile_model(model, "CPU", F32)([x.numpy()])[0]


def test_dynexport_conversions_use_the_translations(program, tmp_path):
    (x,) = _example(7)  # another batch than the export example
    expected = Net()(x).numpy()
    before = CALLS.copy()
    onnx_path = dynexport.to_onnx(program, tmp_path / "model.onnx", registry=KIT)
    assert CALLS["onnx"] == before["onnx"] + 1
    np.testing.assert_allclose(_onnxruntime(onnx_path, x), expected, rtol=1e-5, atol=1e-6)
    model = dynexport.to_openvino(program, registry=KIT)
    assert CALLS["openvino"] == before["openvino"] + 1
    np.testing.assert_allclose(_openvino(model, x), expected, rtol=1e-5, atol=1e-6)


def test_default_registry_conversions_do_not_see_the_test_translations(program, tmp_path):
    """Without KIT, dynexport's conversions fall back to the decomposition (the op's
    process-global CIA kernel) instead of this file's translations."""
    (x,) = _example(5)
    expected = Net()(x).numpy()
    before = CALLS.copy()
    onnx_path = dynexport.to_onnx(program, tmp_path / "default.onnx")
    model = dynexport.to_openvino(program)
    assert CALLS == before
    np.testing.assert_allclose(_onnxruntime(onnx_path, x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_openvino(model, x), expected, rtol=1e-5, atol=1e-6)


def test_plain_conversions_use_the_decomposition(program, tmp_path):
    (x,) = _example(6)
    expected = Net()(x).numpy()
    before = CALLS.copy()
    torch.onnx.export(program, dynamo=True, verbose=False).save(tmp_path / "plain.onnx")
    model = ov.convert_model(program)
    assert CALLS == before
    np.testing.assert_allclose(_onnxruntime(tmp_path / "plain.onnx", x), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_openvino(model, x), expected, rtol=1e-5, atol=1e-6)


# --- ops without translations --------------------------------------------------------------------

@torch.library.custom_op("kit_test::untranslated", mutates_args=())
def untranslated(x: Tensor) -> Tensor:
    return torch.from_numpy(np.cbrt(x.detach().numpy()))


untranslated.register_fake(lambda x: torch.empty_like(x))


@torch.library.custom_op("kit_test::onnx_only", mutates_args=())
def onnx_only(x: Tensor) -> Tensor:
    return torch.from_numpy(np.abs(x.detach().numpy()))


onnx_only.register_fake(lambda x: torch.empty_like(x))


def _abs_onnx(x):
    from onnxscript import opset18 as op

    return op.Abs(x)


KIT.register(onnx_only, onnx=_abs_onnx)


class UserModel(torch.nn.Module):
    def forward(self, x):
        y = untranslated(x) * 2  # untranslated call site
        return onnx_only(y)  # onnx_only call site


def _line_of(marker):
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(f"# {marker}"))


def test_untranslated_ops_are_unsupported_op_hazards_at_the_call_site():
    program = dynexport.export(UserModel(), (torch.randn(2, 3),))
    records = unsupported_ops(program, backends=("onnx", "openvino"), registry=KIT)
    assert records.notes == []
    found = {(r.op, r.backend): r for r in records}
    assert set(found) == {("kit_test.untranslated.default", "onnx"),
                          ("kit_test.untranslated.default", "openvino"),
                          ("kit_test.onnx_only.default", "openvino")}
    # the default registry does not have KIT's ONNX translation of onnx_only
    default = {(r.op, r.backend) for r in unsupported_ops(program, backends=("onnx",))}
    assert default == {("kit_test.untranslated.default", "onnx"),
                       ("kit_test.onnx_only.default", "onnx")}
    for (op, _backend), rec in found.items():
        assert Path(rec.file).resolve() == Path(__file__).resolve()
        assert rec.line == _line_of(f"{op.split('.')[1]} call site")
    hazards = [unsupported_op_hazard(op) for op in records]
    assert {(h.category, h.severity) for h in hazards} == {("unsupported_op", "error")}
    assert all("kit_test." in h.message and h.file and h.line for h in hazards)
