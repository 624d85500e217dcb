"""Which FX node is responsible, from the node-by-node comparison (values.py).

* A wrong result (`lowering`, `nondeterminism`): the first node in graph order whose value
  leaves tolerance while the values it is computed from are within it. Its inputs are the
  nearest compared nodes upstream (nodes without a counterpart in the converted model are
  looked through); the graph's inputs and weights count as exact.
* Reduced precision: the floating-point nodes ranked by the error each adds by itself, its
  relative error less the largest relative error among its inputs, so that a node that only
  carries an error on (a softmax after a bad subtraction) is not blamed. Integer nodes (an
  argmin, a cell index) compute exactly what their inputs say and add nothing, and neither do
  ops that move or compare values without rounding (slices, views, relu, where). Where integer
  values changed, the floating-point nodes upstream of them rank first, since changed labels
  and indices are what a reduced precision most often breaks. A node whose error its consumers
  do not carry on (a branch a `where` discards: a softplus's overflowing exp) is not blamed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch

from dynexport.custom_ops.registry import CustomOp, default_registry
from dynexport.decompositions.splice import DECOMPOSED_FROM
from dynexport.hazards.location import location_from_stack_trace
from dynexport.localization.records import Culprit
from dynexport.localization.values import NodeDiff
from dynexport.names import Translation

# How many nodes a reduced-precision entry names; the rest add less.
TOP_CULPRITS = 5
# A node of which less than this share of its relative error reaches the outputs had its error
# discarded downstream (a masked branch): it changes no output.
_CARRIED = 0.01
# Ops that select, move, copy or compare values without rounding: any error in their output
# was in their inputs (a relu's relative error grows only because its output's scale shrinks).
_ROUND_NOTHING = {"slice", "select", "view", "_unsafe_view", "reshape", "permute", "transpose",
                  "t", "expand", "unsqueeze", "squeeze", "cat", "stack", "clone", "alias",
                  "contiguous", "flatten", "unflatten", "split", "split_with_sizes", "chunk",
                  "index_select", "gather", "unbind", "as_strided", "repeat", "constant_pad_nd",
                  "flip", "roll", "narrow", "relu", "abs", "neg", "maximum", "minimum", "clamp",
                  "clamp_min", "clamp_max", "where", "amax", "amin", "max_pool2d",
                  "max_pool2d_with_indices", "hardtanh"}


def _nearest_compared(start: list[torch.fx.Node], diffs: dict[str, NodeDiff],
                      step: Callable[[torch.fx.Node], list[torch.fx.Node]]) -> list[NodeDiff]:
    """The first compared nodes reached from `start` walking `step` (to inputs or to users)
    through nodes without a counterpart in the converted model."""
    found, seen, stack = [], set(), list(start)
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.name in diffs:
            found.append(diffs[node.name])
        elif node.op == "call_function":
            stack.extend(step(node))
    return found


def _compared_inputs(node: torch.fx.Node, diffs: dict[str, NodeDiff]) -> list[NodeDiff]:
    return _nearest_compared(node.all_input_nodes, diffs, lambda n: n.all_input_nodes)


def _compared_consumers(node: torch.fx.Node, diffs: dict[str, NodeDiff]) -> list[NodeDiff]:
    return _nearest_compared(list(node.users), diffs, lambda n: list(n.users))


def _nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function"]


def first_divergence(graph: torch.fx.Graph, diffs: dict[str, NodeDiff],
                     runtime: str) -> Culprit | None:
    """The first node in graph order out of tolerance with its inputs within it; without
    such a node (its inputs were not readable), the first node out of tolerance."""
    first = None
    for node in _nodes(graph):
        diff = diffs.get(node.name)
        if diff is None or diff.passed:
            continue
        inputs = _compared_inputs(node, diffs)
        if all(i.passed for i in inputs):
            return culprit(node, diff, inputs, runtime)
        first = first or culprit(node, diff, inputs, runtime)
    return first


def first_self_difference(graph: torch.fx.Graph, self_diffs: dict[str, NodeDiff],
                          runtime: str) -> Culprit | None:
    """The first node whose value differs between two runs of the runtime while its inputs'
    values are equal in both."""
    for node in _nodes(graph):
        diff = self_diffs.get(node.name)
        if diff is not None and not diff.passed:
            inputs = _compared_inputs(node, self_diffs)
            if all(i.passed for i in inputs):
                return culprit(node, diff, inputs, runtime)
    return None


def added_error(graph: torch.fx.Graph, diffs: dict[str, NodeDiff], runtime: str,
                top: int = TOP_CULPRITS) -> list[Culprit]:
    """The `top` floating-point nodes out of tolerance by the relative error each adds over
    its inputs', those upstream of a changed integer node first; nodes that add none are
    left out."""
    feeding = _upstream_of(n for n in _nodes(graph) if n.name in diffs
                           and diffs[n.name].integer and not diffs[n.name].passed)
    carried = _carried(graph, diffs)
    ranked = []
    for node in _nodes(graph):
        diff = diffs.get(node.name)
        if (diff is None or diff.integer or diff.passed or _rounds_nothing(node)
                or carried[node.name] < _CARRIED):
            continue
        inputs = _compared_inputs(node, diffs)
        added = diff.max_rel - max((i.max_rel for i in inputs), default=0.0)
        if added > 0:
            found = culprit(node, diff, inputs, runtime)
            found.input_lines = _producer_lines(node)
            ranked.append((node.name in feeding, added, found))
    ranked.sort(key=lambda entry: (not entry[0], -entry[1]))
    return [found for *_, found in ranked[:top]]


def _producer_lines(node: torch.fx.Node) -> list[str]:
    """The user's lines of the ops that round `node`'s inputs: walking up through ops that
    round nothing (a slice of a convolution's output) to the first that does. An op that
    amplifies its inputs' rounding (a softmax of bf16 logits) loses the same kept in f32 alone;
    its producers must be too."""
    lines, seen, stack = [], set(), list(node.all_input_nodes)
    while stack:
        upstream = stack.pop()
        if upstream.name in seen or upstream.op != "call_function":
            continue
        seen.add(upstream.name)
        if _rounds_nothing(upstream):
            stack.extend(upstream.all_input_nodes)
            continue
        where = location_from_stack_trace(upstream.meta.get("stack_trace"))
        if where is not None:
            lines.append(f"{where.file}:{where.line}")
    return list(dict.fromkeys(lines))


def _rounds_nothing(node: torch.fx.Node) -> bool:
    if node.target is operator.getitem:  # one output of a multi-output op is that op's
        producer = node.args[0]
        return isinstance(producer, torch.fx.Node) and _rounds_nothing(producer)
    target = node.target
    name = target._opname if isinstance(target, torch._ops.OpOverload) else str(target)
    return name in _ROUND_NOTHING


def _carried(graph: torch.fx.Graph, diffs: dict[str, NodeDiff]) -> dict[str, float]:
    """Per compared node, the share of its relative error that reaches the outputs: along the
    path that keeps the most, no more than the smallest error on the way (1 for a node nothing
    compared consumes)."""
    surviving: dict[str, float] = {}
    for node in reversed(_nodes(graph)):
        diff = diffs.get(node.name)
        if diff is not None:
            consumers = _compared_consumers(node, diffs)
            surviving[node.name] = min(diff.max_rel, max(
                (surviving[c.node] for c in consumers), default=diff.max_rel))
    return {name: surviving[name] / diffs[name].max_rel if diffs[name].max_rel else 1.0
            for name in surviving}


def _upstream_of(nodes) -> set[str]:
    """The names of every node the given nodes are computed from."""
    seen: set[str] = set()
    stack = [i for node in nodes for i in node.all_input_nodes]
    while stack:
        node = stack.pop()
        if node.name not in seen:
            seen.add(node.name)
            stack.extend(node.all_input_nodes)
    return seen


def culprit(node: torch.fx.Node, diff: NodeDiff, inputs: list[NodeDiff],
            runtime: str) -> Culprit:
    return Culprit(op=_op_name(node), node=node.name,
                   location=location_from_stack_trace(node.meta.get("stack_trace")),
                   max_abs_diff=diff.max_abs, max_rel_diff=diff.max_rel,
                   input_max_abs_diff=max((i.max_abs for i in inputs), default=0.0),
                   translation=translation_of(node), translated_by=_translated_by(node, runtime),
                   from_floats=diff.integer and any(not i.integer for i in inputs),
                   narrowed_to_int32=diff.narrowed_to_int32)


def _custom_op(node: torch.fx.Node) -> CustomOp | None:
    """The registered custom op `node` calls, if any."""
    target = node.target
    return default_registry().get(target) if isinstance(target, torch._ops.OpOverload) else None


def _translated_by(node: torch.fx.Node, runtime: str) -> str | None:
    op = _custom_op(node)
    function = getattr(op, "onnx" if runtime == "onnxruntime" else "openvino", None)
    return f"{function.__module__}.{function.__qualname__}" if function is not None else None


def _op_name(node: torch.fx.Node) -> str:
    """"aten.mm.default"; for one output of a multi-output op, that op's name and the index."""
    target = node.target
    if target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
        return f"{_op_name(node.args[0])}[{node.args[1]}]"
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def translation_of(node: torch.fx.Node) -> Translation:
    """Whose translation the node's op went through: a custom op's, registered by dynexport
    or by the user (by the module that defines the translation); an op dynexport decomposes;
    else the exporter's own (torch.onnx's torchlib, OpenVINO's PyTorch frontend)."""
    op = _custom_op(node)
    if op is not None:
        translation = op.onnx or op.openvino
        module = getattr(translation, "__module__", "") or ""
        return "dynexport" if module.startswith("dynexport.") else "user"
    if DECOMPOSED_FROM in node.meta:
        return "dynexport"
    return "exporter"
