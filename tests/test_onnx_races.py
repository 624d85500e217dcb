"""racy_nodes: the ONNX nodes onnxruntime's CPU kernels compute with a data race, found in the
main graph, in control-flow subgraphs and in ONNX functions, with the FX node and the user's
line torch.onnx recorded for them."""

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import dynexport
from dynexport.backends.onnx_races import has_racy_nodes, racy_nodes

OPSET = [helper.make_opsetid("", 18)]


def _scatter(op_type: str, reduction: str | None, name: str, fx_node: str | None = None,
             inputs=("data", "indices", "updates"), output="out") -> onnx.NodeProto:
    attributes = {"reduction": reduction} if reduction else {}
    node = helper.make_node(op_type, list(inputs), [output], name=name, **attributes)
    if fx_node:
        _annotate(node, fx_node)
    return node


def _annotate(node: onnx.NodeProto, fx_node: str, line: str = "bev.index_put_(...)") -> None:
    """The metadata torch.onnx's dynamo exporter writes (its format, seen in a real export)."""
    helper.set_metadata_props(node, {
        "pkg.torch.onnx.fx_node": f"%{fx_node} : [num_users=1] = call_function[target=...]",
        "pkg.torch.onnx.stack_trace": f'File "model.py", line 6, in forward\n    {line}'})


def _model(nodes, functions=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [4, 3]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, [5, 1]),
         helper.make_tensor_value_info("updates", TensorProto.FLOAT, [5, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 3])])
    return helper.make_model(graph, opset_imports=[*OPSET, helper.make_opsetid("custom", 1)],
                             functions=list(functions))


@pytest.mark.parametrize("reduction", ["add", "mul", "min", "max"])
def test_scatternd_with_a_reduction_races(reduction):
    (found,) = racy_nodes(_model([_scatter("ScatterND", reduction, "pool", "index_put")]))
    assert (found.name, found.op_type, found.reduction) == ("pool", "ScatterND", reduction)
    assert found.fx_node == "index_put" and found.function is None
    assert found.stack_trace.endswith("bev.index_put_(...)")


@pytest.mark.parametrize("op_type, reduction", [
    ("ScatterND", None), ("ScatterND", "none"),
    ("ScatterElements", "add"), ("ScatterElements", "max"), ("ScatterElements", None)])
def test_kernels_that_do_not_race_are_not_listed(op_type, reduction):
    nodes = [_scatter(op_type, reduction, "write")]
    if op_type == "ScatterElements":  # its indices have the updates' shape
        nodes = [helper.make_node("Expand", ["indices", "shape"], ["wide"], name="expand"),
                 _scatter(op_type, reduction, "write", inputs=("data", "wide", "updates"))]
    model = _model(nodes)
    model.graph.initializer.append(helper.make_tensor("shape", TensorProto.INT64, [2], [5, 3]))
    onnx.checker.check_model(model, full_check=True)
    assert racy_nodes(model) == []


@pytest.mark.parametrize("nodes, expected", [
    ([_scatter("ScatterND", "add", "pool")], True),
    ([_scatter("ScatterND", "none", "write")], False),  # read, and found harmless
    ([helper.make_node("Add", ["data", "data"], ["out"], name="add")], False),  # not read
])
def test_has_racy_nodes_reads_a_file(tmp_path, nodes, expected):
    onnx.save(_model(nodes), tmp_path / "m.onnx")
    assert has_racy_nodes(tmp_path / "m.onnx") is expected


def test_a_racing_node_inside_a_function_takes_the_call_sites_provenance(tmp_path):
    pool = helper.make_function(
        "custom", "Pool", ["data", "indices", "updates"], ["out"],
        [_scatter("ScatterND", "add", "inner_scatter")], OPSET)
    call = helper.make_node("Pool", ["data", "indices", "updates"], ["out"], name="call_pool",
                            domain="custom")
    _annotate(call, "bev_pool", "custom_pool(feats, cells)")
    model = _model([call], functions=[pool])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "m.onnx")
    (found,) = racy_nodes(tmp_path / "m.onnx")  # a path is read as well
    assert (found.name, found.function, found.fx_node) == ("inner_scatter", "custom::Pool",
                                                           "bev_pool")
    assert "custom_pool(feats, cells)" in found.stack_trace
    assert found.describe() == ("ScatterND(reduction=add) inner_scatter in function "
                                "custom::Pool (from FX node bev_pool)")


def test_a_racing_node_in_a_control_flow_branch_is_found():
    def branch(name):
        return helper.make_graph([_scatter("ScatterND", "add", name, output=f"{name}_out")],
                                 name, [], [helper.make_tensor_value_info(
                                     f"{name}_out", TensorProto.FLOAT, [4, 3])])

    condition = helper.make_node("Constant", [], ["flag"], name="flag",
                                 value=helper.make_tensor("v", TensorProto.BOOL, [], [True]))
    choose = helper.make_node("If", ["flag"], ["out"], name="cond",
                              then_branch=branch("then_scatter"),
                              else_branch=branch("else_scatter"))
    _annotate(choose, "cond")
    found = racy_nodes(_model([condition, choose]))
    assert sorted((n.name, n.fx_node) for n in found) == [("else_scatter", "cond"),
                                                          ("then_scatter", "cond")]


class _BevPool(torch.nn.Module):
    def forward(self, cells, feats):
        bev = feats.new_zeros(16, feats.shape[1])
        bev.index_put_((cells,), feats, accumulate=True)  # the line the report names
        return bev


def _example():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 16, (200,), generator=generator), torch.randn(200, 4,
                                                                         generator=generator)


@pytest.mark.slow  # converts through torch.onnx
def test_torch_onnx_export_of_an_accumulating_index_put_is_found():
    program = torch.export.export(_BevPool(), _example())
    onnx_program = torch.onnx.export(program, (), dynamo=True, verbose=False)
    (found,) = racy_nodes(onnx_program.model_proto)
    assert (found.op_type, found.reduction) == ("ScatterND", "add")
    assert found.fx_node == "index_put"  # index_put_ functionalized by torch.onnx
    assert found.name in {n.name for n in onnx_program.model_proto.graph.node}
    assert "bev.index_put_((cells,), feats, accumulate=True)" in found.stack_trace


@pytest.mark.slow  # converts through torch.onnx
def test_dynexports_onnx_of_the_same_model_has_none(tmp_path):
    path = dynexport.to_onnx(dynexport.export(_BevPool(), _example()), tmp_path / "m.onnx")
    assert racy_nodes(path) == []
    assert "ScatterElements" in {n.op_type for n in onnx.load(path).graph.node}
