"""What dynexport fixed by itself: each item would have broken the export or its numbers, and
the user need not change anything. Reported beside the hazards (report `handled`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dynexport.adapters.torch_export import has_unbacked_size
from dynexport.hazards.common import method_location
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.location import location_from_stack_trace
from dynexport.hazards.non_tensor_output import is_captured_number, return_location
from dynexport.hazards.records import Handled, SourceLocation

# a pool in ceil mode whose windows run past the map (decompositions/pooling.py)
_POOL = ("explicit padding and a floor-mode pool whose kernel fits the padded map, scaled to "
         "PyTorch's divisor where a window is clipped")
_REPLACEMENTS = {
    "aten.linalg_inv_ex.default": "pivoted Gauss-Jordan elimination",
    "aten.linalg_det.default": "elimination with partial pivoting",
    "aten._linalg_det.default": "elimination with partial pivoting",
    "aten.linalg_solve_ex.default": "pivoted Gauss-Jordan elimination",
    "aten._linalg_solve_ex.default": "pivoted Gauss-Jordan elimination",
    "aten.index_add.default": "scatter_add (exact under multi-threaded onnxruntime)",
    "aten.index_put.default": "index_add over a flat index (exact under multi-threaded "
                              "onnxruntime)",
    "aten.index_put_.default": "index_add over a flat index (exact under multi-threaded "
                               "onnxruntime)",
    "aten.avg_pool1d.default": _POOL,
    "aten.avg_pool2d.default": _POOL,
    "aten.avg_pool3d.default": _POOL,
    "aten.max_pool1d.default": _POOL,
    "aten.max_pool2d.default": _POOL,
    "aten.max_pool3d.default": _POOL,
    "higher_order.map_impl": "its body once per slice of the static mapped dimension, stacked",
    "aten._unique2.default": "a sort and the runs of equal neighbours",
    "aten.unique_dim.default": "a stable sort per column and the runs of equal neighbours",
    "aten.unique_consecutive.default": "the runs of equal neighbours",
    "aten.index_reduce.default": "scatter_reduce",
    "aten.searchsorted.Tensor": "bucketize",
    "aten.scaled_dot_product_attention.default": "itself and a contiguous copy of its output, "
        "whose layout otherwise depends on the CPU kernel torch picks (torch.onnx's re-trace "
        "then fails on a later view)",
}


def _at(what: str, location: SourceLocation | None, op_rewrite: bool = False) -> Handled:
    return Handled(what, location.file if location else None,
                   location.line if location else None, location.code if location else None,
                   op_rewrite)


def _program_calls(evidence: Evidence,
                   describe: Callable[[torch.fx.Node], str | None]) -> list[Handled]:
    """An op rewrite at each call of the captured program that `describe` says dynexport
    converts by itself, once per description and line."""
    program = evidence.capture.program if evidence.capture else None
    seen: dict[tuple, Handled] = {}
    for node in program.graph.nodes if program is not None else []:
        what = describe(node) if node.op == "call_function" else None
        if what:
            item = _at(what, location_from_stack_trace(node.meta.get("stack_trace")), True)
            seen.setdefault((item.what, item.file, item.line), item)
    return list(seen.values())


def keyword_call(evidence: Evidence) -> list[Handled]:
    """A method called with keyword arguments (mmdet's `forward(return_loss=False, **kwargs)`):
    torch.export binds them natively; non-tensor values become constants of the program."""
    example = evidence.example
    if example is None or not example.kwargs:
        return []
    constants = {k: v for k, v in example.kwargs.items() if not _holds_tensor(v)}
    what = ("called with keyword arguments (" + ", ".join(example.kwargs) + ") natively by "
            "torch.export, no wrapper or tracing of positional inputs")
    if constants:
        what += "; the non-tensor ones are constants of the program: " + ", ".join(
            f"{k}={v!r}" for k, v in constants.items())
    return [_at(what, method_location(evidence.model, evidence.method))]


def decompositions(evidence: Evidence) -> list[Handled]:
    """Ops the backends lack that dynexport's decompositions replaced."""
    seen: dict[tuple, Handled] = {}
    for op, location in evidence.replaced:
        how = _REPLACEMENTS.get(op, "portable ops")
        item = _at(f"`{op}` decomposed into {how}, which ONNX and OpenVINO convert", location,
                   op_rewrite=True)
        seen.setdefault((op, item.file, item.line), item)
    return list(seen.values())


def index_translations(evidence: Evidence) -> list[Handled]:
    """aten ops a backend lacks or lowers wrongly, converted by dynexport's own translations
    (backends/onnx_index_ops.py, backends/openvino_index_ops.py)."""
    from dynexport.backends import onnx_index_ops, openvino_index_ops

    def describe(node: torch.fx.Node) -> str | None:
        how = [f"{backend}: {table[node.target]}" for backend, table in
               (("ONNX", onnx_index_ops.TRANSLATED), ("OpenVINO", openvino_index_ops.TRANSLATED))
               if node.target in table]
        return f"`{node.target}` converted by dynexport's translation ({'; '.join(how)})" \
            if how else None

    return _program_calls(evidence, describe)


def kit_ops(evidence: Evidence) -> list[Handled]:
    """Ops of dynexport's op kit (deform_conv2d, nms, ...) in the program, at the user's call,
    with how each backend gets them."""
    from dynexport.coverage import kit_lowering, op_name

    def describe(node: torch.fx.Node) -> str | None:
        how = kit_lowering(node.target)
        return f"`{op_name(node.target)}` from dynexport's op kit. {how}" if how else None

    return _program_calls(evidence, describe)


def library_patches(evidence: Evidence) -> list[Handled]:
    """Known-library functions replaced during capture (dynexport/patches), at each call."""
    seen: dict[tuple, Handled] = {}
    for call in evidence.capture.patched if evidence.capture else []:
        patch = call.patch
        what = (f"`{patch.target.replace(':', '.')}` replaced during capture by the "
                f"known-library patch `{patch.name}`: {patch.why}. The eager model is "
                "unchanged; verification compares against it. "
                f"`--no-patch {patch.name}` turns it off")
        item = _at(what, call.location, op_rewrite=True)
        seen.setdefault((patch.name, item.file, item.line), item)
    return list(seen.values())


def float64_in_openvino(evidence: Evidence) -> list[Handled]:
    """OpenVINO's CPU plugin computes float64 in float32; verification judges those outputs
    with float32 tolerances instead of failing them."""
    program = evidence.capture.program if evidence.capture else None
    if program is None:
        return []
    for node in program.graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
            location = location_from_stack_trace(node.meta.get("stack_trace"))
            return [_at("float64 computed in float32 by OpenVINO's CPU plugin; verification "
                        "compares these values with float32 tolerances", location)]
    return []


def size_oblivious(evidence: Evidence) -> list[Handled]:
    """Dimensions declared dynamic whose example size is 0 or 1, kept dynamic."""
    dims = evidence.capture.size_oblivious_dims if evidence.capture else []
    if not dims:
        return []
    return [Handled(f"dimension{'s' if len(dims) > 1 else ''} {', '.join(dims)} declared "
                    "dynamic with an example size of 0 or 1: captured size-obliviously, so the "
                    "models accept other sizes (torch would pin the size to the example's)")]


def data_dependent_outputs(evidence: Evidence) -> list[Handled]:
    """Outputs whose length depends on the data (nms, nonzero): kept dynamic everywhere and
    verified on both inputs."""
    program = evidence.capture.program if evidence.capture else None
    if program is None:
        return []
    output = next(n for n in program.graph.nodes if n.op == "output")
    names = []
    for index, node in enumerate(output.args[0]):
        if has_unbacked_size(getattr(node, "meta", {}).get("val")):
            names.append(str(index))
    if not names:
        return []
    return [Handled(f"output{'s' if len(names) > 1 else ''} {', '.join(names)} "
                    "ha" + ("ve" if len(names) > 1 else "s") + " a length that depends on the "
                    "data (e.g. boxes kept by nms); kept dynamic in every backend and verified "
                    "on both inputs")]


def unused_inputs_kept(evidence: Evidence) -> list[Handled]:
    """Inputs a backend's converter dropped because nothing uses them, put back so that every
    artifact takes the program's inputs, by name and by position."""
    return [Handled(f"input `{name}` is not used by the computation (at most its size, fixed "
                    f"at capture); {backend}'s converter dropped it and dynexport kept it as an "
                    "unused input, so model.xml and model.onnx take the same inputs")
            for backend, names in evidence.unused_inputs.items() for name in names]


def number_outputs(evidence: Evidence) -> list[Handled]:
    """Python numbers the model returns (a size, `x.shape[1] + 1`): 0-d tensor outputs of
    the artifacts, verified like any other output."""
    numbers = {name: type(value).__name__ for name, value in evidence.outputs
               if is_captured_number(evidence, value)}
    location = return_location(evidence.model, evidence.method) if numbers else None
    return [_at(f"output `{name}` is a Python {kind}: model.onnx and model.xml return it as "
                "a 0-d tensor", location) for name, kind in numbers.items()]


def mutated_inputs(evidence: Evidence) -> list[Handled]:
    """In-place writes to a user input (`x.mul_(2)`): eager ran on copies, so every runtime is
    compared with eager on the same input values. The artifacts are functional: they return
    the outputs, and a caller that reads the changed input afterwards does not see the change."""
    program = evidence.capture.program if evidence.capture else None
    if program is None:
        return []
    inputs = set(program.graph_signature.user_inputs)
    seen: dict[tuple, Handled] = {}
    for node in program.graph.nodes:
        name = written_input(node, inputs)
        if name is not None:
            item = _at(f"input `{name}` is changed in place here: eager ran on a copy of each "
                       "input, so verification compares like with like; model.onnx and "
                       f"model.xml return the outputs only, not the changed `{name}`",
                       location_from_stack_trace(node.meta.get("stack_trace")))
            seen.setdefault((name, item.file, item.line), item)
    return list(seen.values())


def written_input(node: torch.fx.Node, inputs: set[str]) -> str | None:
    """The user input `node` writes in place (through views of it), if any."""
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    if schema is None:
        return None
    for argument, value in zip(schema.arguments, node.args, strict=False):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        while isinstance(value, torch.fx.Node) and value.op == "call_function" and \
                getattr(value.target, "_schema", None) is not None and value.args and \
                value.target._schema.arguments[0].alias_info is not None:
            value = value.args[0]  # a view: the write lands in its base
        if isinstance(value, torch.fx.Node) and value.op == "placeholder" and value.name in inputs:
            return value.name
    return None


def _holds_tensor(value: object) -> bool:
    return any(isinstance(leaf, torch.Tensor)
               for leaf in torch.utils._pytree.tree_leaves(value))


STEPS: tuple[Callable[[Evidence], list[Handled]], ...] = (
    keyword_call, decompositions, index_translations, kit_ops, library_patches,
    float64_in_openvino, size_oblivious,
    data_dependent_outputs, unused_inputs_kept, number_outputs, mutated_inputs)


def find_handled(evidence: Evidence) -> list[Handled]:
    return [item for step in STEPS for item in step(evidence)]
