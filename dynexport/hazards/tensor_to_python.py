"""tensor_to_python: a tensor turned into a Python value (`.item()`, `int(t)`, ...)."""

from __future__ import annotations

import torch

from dynexport.hazards.common import (
    VALUE_FIX,
    assumed,
    conversion_category,
    draft_failures,
    hazard,
    is_branch,
)
from dynexport.hazards.conversions import Conversion
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.location import location_from_stack_trace
from dynexport.hazards.records import Hazard

_RULE = "tensor_to_python.from_watch"
_SCALAR_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)


def from_watch(evidence: Evidence) -> list[Hazard]:
    """Conversions the eager watch saw: an error for data, a warning for constants, for a
    branch on the length of a mask (which is the same for every input) and for a value the
    captured graph computes itself."""
    in_graph = _lines_computed_in_graph(evidence)
    found = []
    for c in evidence.conversions:
        if conversion_category(c) != "tensor_to_python":
            continue
        where = (c.location.file, c.location.line)
        found.append(_in_graph(c, in_graph[where]) if where in in_graph and c.from_data
                     else _watched(c))
    return found


def _lines_computed_in_graph(evidence: Evidence) -> dict[tuple[str, int], bool]:
    """Lines whose `.item()` strict or non-strict capture traced into the program, an
    unbacked value the graph computes for each input (draft export may instead have kept the
    example's), each with whether that value reaches an output."""
    capture = evidence.capture
    if capture is None or capture.program is None or capture.strategy == "draft":
        return {}
    found: dict[tuple[str, int], bool] = {}
    for node in capture.program.graph.nodes:
        if node.op == "call_function" and node.target in _SCALAR_READS:
            where = location_from_stack_trace(node.meta.get("stack_trace"))
            if where is not None:
                key = (where.file, where.line)
                found[key] = found.get(key, False) or _reaches_output(node)
    return found


def _reaches_output(node: torch.fx.Node) -> bool:
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current.op == "output":
            return True
        for user in current.users:
            if user not in seen:
                seen.add(user)
                stack.append(user)
    return False


def _in_graph(c: Conversion, feeds_outputs: bool) -> Hazard:
    use = ("the converted models compute it for each input" if feeds_outputs
           else "it feeds no output, only what torch._check states about it")
    return hazard(
        _RULE, "tensor_to_python", "warning", c.location,
        f"`{c.kind}` of a tensor computed from the inputs, captured as a value the graph "
        f"computes (nothing of the example was kept): {use}. What torch._check states about "
        "it is asserted by exported.pt2 only, not by model.onnx and model.xml.",
        "Nothing to do for inputs within the bounds torch._check states; to have every "
        "runtime check them, return the check as a tensor output.")


def _watched(c: Conversion) -> Hazard:
    if c.assumed_constant:
        return hazard(
            _RULE, "tensor_to_python", "warning", c.location,
            f"`{c.kind}` inside a function marked torch._dynamo.assume_constant_result: export "
            "keeps the example's value, as declared; the probe input checks whether another "
            "input needs another value.",
            "Nothing to do while the value is the same for every input; otherwise drop the "
            "decorator and keep the value a tensor.")
    branch = c.kind == "bool" or is_branch(c.location.code)
    if c.kind == "size":
        return hazard(
            _RULE, "tensor_to_python", "warning", c.location,
            "A branch reads the length of a boolean mask, which is the number of candidates, "
            "not the number selected: it is the same for every input of this shape, so the "
            "branch is decided once at export and the other side is dead code.",
            "Drop the dead branch, or, if the intent was 'nothing selected', state the fact "
            "with `torch._check(mask.any())` or handle it with `torch.where`.")
    if branch:
        return hazard(
            _RULE, "tensor_to_python", "warning", c.location,
            "A branch reads a tensor that does not depend on the inputs (a constant buffer); "
            "export evaluates it once and keeps one side.",
            "Nothing to do if the value never changes; otherwise make it a Python constant of "
            "the module.")
    if not c.from_data:
        return hazard(
            _RULE, "tensor_to_python", "warning", c.location,
            f"`{c.kind}` of a tensor that does not depend on the inputs (a constant buffer or "
            "parameter); export folds it to the example's value, which is right as long as the "
            "buffer never changes.",
            "Store the value as a Python number on the module (e.g. in __init__) so that no "
            "tensor is read at export.")
    return hazard(
        _RULE, "tensor_to_python", "error", c.location,
        f"`{c.kind}` turns a tensor computed from the inputs into a Python value; export either "
        "bakes the example's value into the graph or leaves an unbacked symbol that the "
        "backends cannot convert.", VALUE_FIX)


def from_draft(evidence: Evidence) -> list[Hazard]:
    """A data-dependent guard draft export recorded where the user's code needs a value of
    data as a Python number without converting a tensor itself (e.g. `x[mask].view(n, -1)`
    needs the number selected): the eager watch sees no conversion there. Where the watch saw
    the line, its verdict (data or constant) stands."""
    watched = {(c.location.file, c.location.line) for c in evidence.conversions}
    return [hazard(
        "tensor_to_python.from_draft", "tensor_to_python", "error", where,
        f"A value computed from tensor data was needed as a Python number: {assumed(data)}.",
        VALUE_FIX, detail=f"{kind}: {data.get('expr', '')}")
        for kind, where, data in draft_failures(evidence.capture)
        if kind == "DATA_DEPENDENT_ERROR" and where is not None and not is_branch(where.code)
        and (where.file, where.line) not in watched]


RULES = (from_watch, from_draft)
