"""`map` (functorch.experimental.control_flow.map, torch's `map_impl` higher-order op) over a
static leading dimension, unrolled: neither torch.onnx nor OpenVINO's frontend converts
`map_impl` (torch's export example `dynamic_shape_map`). The body runs once per slice and the
results are stacked, which is what `map` computes. A map over a dynamic dimension stays, and
the coverage preflight names it."""

from __future__ import annotations

import copy
import operator

import torch
from torch.export import ExportedProgram

MAP = torch.ops.higher_order.map_impl


def static_maps(program: ExportedProgram) -> list[torch.fx.Node]:
    """The top-level `map_impl` nodes whose mapped dimension has a fixed size."""
    return [node for node in program.graph.nodes
            if node.op == "call_function" and node.target is MAP
            and isinstance(_mapped_size(node), int)]


def unroll_static_maps(program: ExportedProgram) -> ExportedProgram:
    """`program` with every static map unrolled (a re-traced copy), or `program` itself when
    it has none."""
    if not static_maps(program):
        return program
    program = copy.deepcopy(program)
    module = program.graph_module
    graph = module.graph
    for node in static_maps(program):
        body_attr, xs, args = node.args
        body = getattr(module, body_attr.target)
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        with graph.inserting_before(node):
            per_slice = []
            for index in range(_mapped_size(node)):
                slices = [graph.call_function(torch.ops.aten.select.int, (x, 0, index))
                          for x in xs]
                out = graph.graph_copy(body.graph, dict(zip(placeholders, slices + list(args),
                                                            strict=True)))
                per_slice.append(out if isinstance(out, (list, tuple)) else [out])
            stacked = [graph.call_function(torch.ops.aten.stack.default,
                                           ([outs[k] for outs in per_slice], 0))
                       for k in range(len(per_slice[0]))]
        for user in list(node.users):
            if user.target is not operator.getitem:  # not the shape assumed here: keep it
                return program
            user.replace_all_uses_with(stacked[user.args[1]])
            graph.erase_node(user)
        graph.erase_node(node)
        graph.erase_node(body_attr)
        delattr(module, body_attr.target)
    graph.eliminate_dead_code()
    module.recompile()
    return program.run_decompositions({})  # metadata of the new nodes, as a capture gives


def _mapped_size(node: torch.fx.Node) -> object:
    xs = node.args[1]
    value = xs[0].meta.get("val") if xs else None
    return value.shape[0] if isinstance(value, torch.Tensor) and value.dim() else None
