"""Smoke tests of dynexport.adapters: one test per private torch / torch.onnx / OpenVINO symbol
dynexport touches, each checking that it exists and behaves as dynexport assumes on a tiny
program, so that an upgrade that changes one fails the test named after it."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from dynexport.adapters import openvino_frontend, torch_export, torch_onnx
from dynexport.custom_ops.registry import OpRegistry

# --- a tiny custom op: opaque kernel, CIA decomposition (given through a scoped registry) --------


@torch.library.custom_op("adapter_test::cube", mutates_args=())
def cube(x: Tensor) -> Tensor:
    return torch.from_numpy(np.power(x.detach().numpy(), 3))


cube.register_fake(lambda x: torch.empty_like(x))


def _cube_decomposition(x):
    return x * x * x


def _cube_onnx(x):
    from onnxscript import opset18 as op

    return op.Mul(x, op.Mul(x, x))


def _cube_openvino(context):
    import openvino.opset15 as ops

    x = context.get_input(0)
    return [ops.multiply(x, ops.multiply(x, x)).output(0)]


SCOPED = OpRegistry()
SCOPED.register(cube, decomposition=_cube_decomposition)
CUBE = torch.ops.adapter_test.cube.default


class CubeNet(torch.nn.Module):
    def forward(self, x):
        return cube(x + 1) * 2


class LinearNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


@pytest.fixture(scope="module")
def cube_program():
    return torch.export.export(CubeNet(), (torch.randn(2, 3),))


@pytest.fixture(scope="module")
def linear_program():
    return torch.export.export(LinearNet(), (torch.randn(2, 4),))


def _targets(gm: torch.fx.GraphModule) -> set:
    return {node.target for node in gm.graph.nodes if node.op == "call_function"}


# --- torch_export ---------------------------------------------------------------------------------

def test_torch_export_op_types():
    assert isinstance(torch.ops.aten.add.Tensor, torch_export.OpOverload)
    assert isinstance(torch.ops.aten.add, torch_export.OpOverloadPacket)
    assert isinstance(torch.ops.higher_order.cond, torch_export.HigherOrderOperator)
    assert torch_export.is_higher_order(torch.ops.higher_order.cond, "cond")
    assert not torch_export.is_higher_order(torch.ops.higher_order.cond, "with_effects")
    assert not torch_export.is_higher_order(torch.ops.aten.add.Tensor)


def test_torch_export_overload_name():  # OpOverload._schema.name, ._overloadname
    assert torch_export.overload_name(torch.ops.aten.add.Tensor) == "aten.add.Tensor"
    assert torch_export.overload_name(torch.ops.aten.relu.default) == "aten.relu.default"
    assert torch_export.overload_name(CUBE) == "adapter_test.cube.default"


def test_torch_export_as_overload():  # torch._library.custom_ops.CustomOpDef._opoverload
    assert isinstance(cube, torch._library.custom_ops.CustomOpDef)
    for spelling in (cube, CUBE, torch.ops.adapter_test.cube, "adapter_test::cube",
                     "adapter_test::cube.default"):
        assert torch_export.as_overload(spelling) is CUBE
    with pytest.raises(ValueError, match="op: no torch op"):
        torch_export.as_overload("adapter_test::no_such_op")
    with pytest.raises(TypeError, match="op: expected a torch op"):
        torch_export.as_overload(len)


def test_torch_export_has_kernel_for():  # torch._C._dispatch_has_kernel_for_dispatch_key
    assert torch_export.has_kernel_for(torch.ops.aten.linear.default, torch_export.CIA)
    assert not torch_export.has_kernel_for(torch.ops.aten.add.Tensor, torch_export.CIA)
    # the decomposition SCOPED registered is the op's CIA kernel
    assert torch_export.has_kernel_for(CUBE, torch_export.CIA)


def test_torch_export_custom_decomp_table(cube_program):
    """CustomDecompTable holds every CIA op, custom ones included, and pop() takes one out."""
    table = torch_export.custom_decomp_table()
    assert CUBE in table and torch.ops.aten.linear.default in table
    assert CUBE in _targets(cube_program.graph_module)  # export keeps CIA ops
    assert CUBE not in _targets(cube_program.run_decompositions(table).graph_module)
    table.pop(CUBE)
    assert CUBE not in table
    assert CUBE in _targets(cube_program.run_decompositions(table).graph_module)


class ItemNet(torch.nn.Module):
    def forward(self, x):
        n = x.sum().to(torch.int64).item()
        torch._check(n >= 0)
        return torch.zeros(n) + 1


def test_torch_export_fake_mode_and_isolated_shape_env():
    """detect_fake_mode finds the program's FakeTensorMode; its ShapeEnv keeps a list
    `pending_fresh_unbacked_symbols`, restored by isolated_shape_env."""
    program = torch.export.export(ItemNet(), (torch.ones(3),))
    fake_mode = torch_export.fake_mode_of(program)
    assert isinstance(fake_mode, torch._subclasses.fake_tensor.FakeTensorMode)
    shape_env = fake_mode.shape_env
    assert isinstance(shape_env.pending_fresh_unbacked_symbols, list)
    before = list(shape_env.pending_fresh_unbacked_symbols)
    with torch_export.isolated_shape_env(program):
        shape_env.pending_fresh_unbacked_symbols.append("leaked")
    assert shape_env.pending_fresh_unbacked_symbols == before


def test_torch_export_backed_size_oblivious():  # torch.fx.experimental._config
    from torch.fx.experimental import _config

    assert _config.backed_size_oblivious is False
    with torch_export.backed_size_oblivious():
        assert _config.backed_size_oblivious is True
    assert _config.backed_size_oblivious is False


class BranchNet(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # draft export's data-dependent failure
            return x + 1
        return x - 1


def test_torch_export_draft_report_and_filenames(linear_program):
    """draft_export's program._report, and torch._logging.structured.INTERN_TABLE +
    DraftExportReport.str_to_filename resolving the `filename` indices of a draft failure's
    frames, also on a second draft export."""
    assert torch_export.draft_report(linear_program) is None  # not a draft export
    for _ in range(2):  # the second export finds its file names only in INTERN_TABLE
        program = torch.export.draft_export(BranchNet(), (torch.ones(3),))
        report = torch_export.draft_report(program)
        assert type(report).__name__ == "DraftExportReport"
        filenames = torch_export.draft_filenames(report)
        frames = [frame for failure in report.failures
                  for frame in (failure.data.get("user_stack") or failure.data.get("stack"))]
        assert frames
        files = {Path(filenames[f["filename"]]).resolve() for f in frames
                 if f["filename"] in filenames}
        assert Path(__file__).resolve() in files


def test_torch_export_fx_provenance(linear_program):
    """node.meta["from_node"] (NodeSource graph_id/name/from_node) leads a decomposed node
    back to the node of the program it came from."""
    index = torch_export.graph_index(linear_program.graph_module)
    linear = next(n for n in linear_program.graph.nodes
                  if n.target is torch.ops.aten.linear.default)
    decomposed = linear_program.run_decompositions()
    addmm = next(n for n in decomposed.graph.nodes if n.target is torch.ops.aten.addmm.default)
    assert torch_export.origin(addmm, index) is linear


# --- torch_onnx -----------------------------------------------------------------------------------

def test_torch_onnx_registry():  # _registration.ONNXRegistry.from_torchlib / register_op
    plain = torch_onnx.onnx_registry()
    assert torch_onnx.onnx_registry() is plain  # cached
    custom = torch_onnx.onnx_registry([(CUBE, _cube_onnx)])
    assert custom is not plain
    assert custom.is_registered(CUBE) and not plain.is_registered(CUBE)
    assert plain.is_registered(torch.ops.aten.relu.default)


def test_torch_onnx_prepare_for_export(cube_program):
    """_core._prepare_exported_program_for_export decomposes the CIA custom op unless the
    registry translates it."""
    plain = torch_onnx.prepare_for_export(cube_program, torch_onnx.onnx_registry())
    assert CUBE not in _targets(plain.graph_module)
    kept = torch_onnx.prepare_for_export(cube_program,
                                         torch_onnx.onnx_registry([(CUBE, _cube_onnx)]))
    assert CUBE in _targets(kept.graph_module)


def test_torch_onnx_is_onnx_op():  # _core._is_onnx_op
    import torch.onnx.ops  # noqa: F401  (defines the onnx:: torch ops)

    assert torch_onnx.is_onnx_op(torch.ops.onnx.RotaryEmbedding.opset23)
    assert not torch_onnx.is_onnx_op(torch.ops.aten.add.Tensor)
    assert not torch_onnx.is_onnx_op(len)


class MatrixExpNet(torch.nn.Module):
    def forward(self, m):
        return torch.linalg.matrix_exp(torch.relu(m))


def test_torch_onnx_has_translation(cube_program):  # _dispatching.dispatch
    program = torch.export.export(MatrixExpNet(), (torch.randn(3, 3),))
    nodes = {n.target: n for n in program.graph.nodes if n.op == "call_function"}
    registry = torch_onnx.onnx_registry()
    assert torch_onnx.has_translation(nodes[torch.ops.aten.relu.default], registry)
    assert not torch_onnx.has_translation(nodes[torch.ops.aten.linalg_matrix_exp.default],
                                          registry)
    cube_node = next(n for n in cube_program.graph.nodes if n.target is CUBE)
    assert not torch_onnx.has_translation(cube_node, registry)
    assert torch_onnx.has_translation(cube_node, torch_onnx.onnx_registry([(CUBE, _cube_onnx)]))


# --- openvino_frontend ----------------------------------------------------------------------------

def test_openvino_ops_to_not_decompose():
    kept = openvino_frontend.ops_to_not_decompose()
    assert kept and all(isinstance(op, torch_export.OpOverload) for op in kept)


def test_openvino_decoder_input_matches_convert_model(linear_program, cube_program):
    """decoder_input rebuilds TorchFXPythonDecoder.from_exported_program's decomposition
    (torch's table minus ops_to_not_decompose) and keeps the ops asked for."""
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

    for program in (linear_program, cube_program):
        ours = openvino_frontend.decoder_input(program)
        theirs = TorchFXPythonDecoder.from_exported_program(program)
        assert isinstance(ours, TorchFXPythonDecoder)
        assert _targets(openvino_frontend.decoder_graph_module(ours)) == \
            _targets(openvino_frontend.decoder_graph_module(theirs))
    assert CUBE not in _targets(openvino_frontend.decoder_graph_module(theirs))
    kept = openvino_frontend.decoder_input(cube_program, keep=[CUBE])
    assert CUBE in _targets(openvino_frontend.decoder_graph_module(kept))


def test_openvino_decoder_graph_module(linear_program):  # TorchFXPythonDecoder(...).fx_gm
    gm = linear_program.module()
    assert openvino_frontend.decoder_graph_module(openvino_frontend.decoder(gm)) is gm


def test_openvino_convert_partially_and_framework_nodes(cube_program):
    """convert_partially leaves an op without conversion as a FrameworkNode named
    "<fx node name>/<type>"; a ConversionExtension named "ns.name.overload" converts it."""
    decoder = openvino_frontend.decoder_input(cube_program, keep=[CUBE])
    cube_node = next(n.name for n in openvino_frontend.decoder_graph_module(decoder).graph.nodes
                     if n.target is CUBE)
    unconverted = openvino_frontend.convert_partially(decoder)
    assert openvino_frontend.framework_node_names(unconverted) == [cube_node]
    extension = openvino_frontend.conversion_extension("adapter_test.cube.default",
                                                       _cube_openvino)
    converted = openvino_frontend.convert_partially(decoder, [extension])
    assert openvino_frontend.framework_node_names(converted) == []
    import openvino as ov

    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    got = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})([x])[0]
    np.testing.assert_allclose(got, (x + 1) ** 3 * 2, rtol=1e-6)


def test_openvino_quiet_filters_only_openvino_records():
    def record(path):
        return logging.LogRecord("root", logging.WARNING, path, 1, "msg", None, None)

    root = logging.getLogger()
    ours = record("/site-packages/openvino/frontend/pytorch/fx_decoder.py")
    other = record("/site-packages/torch/export/exported_program.py")
    with openvino_frontend.quiet_openvino():
        assert not root.filter(ours) and root.filter(other)
    assert root.filter(ours)


def test_torch_export_has_unbacked_size_sees_data_dependent_lengths():
    from dynexport.adapters.torch_export import has_unbacked_size

    class Kept(torch.nn.Module):
        def forward(self, x):
            return x[x > 0], x * 2

    program = torch.export.export(Kept(), (torch.randn(6),))
    output = next(n for n in program.graph.nodes if n.op == "output")
    assert [has_unbacked_size(node.meta["val"]) for node in output.args[0]] == [True, False]
    assert not has_unbacked_size(None)
