"""Decompose the nodes of a few ops without re-tracing the whole program.

`ExportedProgram.run_decompositions` re-traces every node (3.5-4.4 s on FlashOcc M0, measured)
to replace the handful dynexport decomposes (a camera-matrix inverse). Here each such node is
replaced by its decomposition traced on the node's own fake values, under the program's fake
mode (so dynamic sizes stay symbolic), and the rest of the graph is copied as it is; every node
records the captured node it came from, as a re-trace does. A node whose decomposition returns
NotImplemented stays, as run_decompositions keeps it. A decomposition that cannot be spliced
this way (it makes a tensor constant, which an ExportedProgram must lift to an input) raises
SpliceUnsupported; the caller re-traces instead.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, OutputSpec, TensorArgument
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from dynexport.adapters.torch_export import OpOverload, copied_from, fake_mode_of, named_graph_copy

__all__ = ["DECOMPOSED_FROM", "SpliceUnsupported", "splice_decompositions"]

# Node meta key: the op a spliced node's decomposition replaced.
DECOMPOSED_FROM = "dynexport_decomposed_from"


class SpliceUnsupported(RuntimeError):
    """A decomposition's graph cannot be put into the program node by node."""


class _Declined(Exception):
    pass


def splice_decompositions(ep: ExportedProgram,
                          table: dict[OpOverload, Callable]) -> ExportedProgram:
    """A new program in which every node of an op in `table` (control-flow branches included)
    is replaced by its decomposition; `ep` itself is left unchanged."""
    fake_mode = fake_mode_of(ep)
    with fake_mode:
        graph_module = _decomposed_copy(ep.graph_module, table)
    outputs = graph_module.graph.output_node().args[0]
    signature = ExportGraphSignature(
        input_specs=list(ep.graph_signature.input_specs),
        output_specs=[_renamed(spec, value) for spec, value
                      in zip(ep.graph_signature.output_specs, outputs, strict=True)])
    return ExportedProgram(
        root=graph_module, graph=graph_module.graph, graph_signature=signature,
        state_dict=ep.state_dict, range_constraints=ep.range_constraints,
        module_call_graph=ep.module_call_graph, example_inputs=ep.example_inputs,
        constants=ep.constants, verifiers=ep.verifiers)


def _renamed(spec: OutputSpec, value: object) -> OutputSpec:
    """`spec` naming `value`, the output node that now holds it (a replaced node's name is
    gone with it)."""
    if isinstance(spec.arg, TensorArgument) and isinstance(value, fx.Node):
        return OutputSpec(spec.kind, TensorArgument(value.name), spec.target)
    return spec


def _decomposed_copy(module: fx.GraphModule,
                     table: dict[OpOverload, Callable]) -> fx.GraphModule:
    graph = named_graph_copy(module.graph)  # new nodes, their meta shared (fake values too)
    for original, node in zip(module.graph.nodes, graph.nodes, strict=True):
        node.meta["from_node"] = [copied_from(original)]  # provenance, as a re-trace keeps it
    attributes = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            value = _attribute(module, node.target)
            attributes[node.target] = _decomposed_copy(value, table) \
                if isinstance(value, fx.GraphModule) else value
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in table:
            _replace(graph, node, table[node.target])
    decomposed = fx.GraphModule(attributes, graph, module.__class__.__name__)
    decomposed.meta.update(module.meta)
    return decomposed


def _attribute(module: torch.nn.Module, target: str) -> Any:
    for name in target.split("."):
        module = getattr(module, name)
    return module


def _replace(graph: fx.Graph, node: fx.Node, decomposition: Callable) -> None:
    """Put `decomposition`'s graph, traced on `node`'s fake values, in place of `node`."""
    leaves, spec = pytree.tree_flatten((node.args, node.kwargs))
    inputs = [leaf for leaf in leaves if isinstance(leaf, fx.Node)]

    def call(*values: Any) -> Any:
        given = iter(values)
        args, kwargs = pytree.tree_unflatten(
            [next(given) if isinstance(leaf, fx.Node) else leaf for leaf in leaves], spec)
        result = decomposition(*args, **kwargs)
        if result is NotImplemented:
            raise _Declined
        return result

    try:
        traced = make_fx(call, tracing_mode="real")(*[n.meta["val"] for n in inputs])
    except _Declined:
        return
    if any(n.op == "get_attr" for n in traced.graph.nodes):
        raise SpliceUnsupported(f"the decomposition of {node.target} makes a tensor constant")
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise SpliceUnsupported(f"{node.target} has inputs its traced decomposition does not")
    before = set(graph.nodes)
    with graph.inserting_before(node):
        result = graph.graph_copy(traced.graph, dict(zip(placeholders, inputs, strict=True)))
    added = [n for n in graph.nodes if n not in before]
    for new in added:
        for key, value in node.meta.items():  # the user's line, module path, provenance
            # not the values, nor the data-dependent sizes the replaced node made (unique's):
            # a new node binds its own, or a re-trace looks for them in its outputs
            if key not in ("val", "tensor_meta", "unbacked_bindings"):
                new.meta[key] = value
        new.meta[DECOMPOSED_FROM] = node.target  # whose lowering a wrong value is: dynexport's
    if isinstance(node.meta.get("val"), list | tuple):
        for user in list(node.users):
            if user.target is not operator.getitem:
                raise SpliceUnsupported(f"{node.target}'s outputs are used whole")
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
    else:
        node.replace_all_uses_with(result)
    graph.erase_node(node)
    for new in reversed(added):  # e.g. linalg_inv_ex's info, when nothing reads it
        if not new.users and not new.is_impure():
            graph.erase_node(new)
