"""torch.export / fx / dispatcher internals dynexport relies on, in one place.

Each name here is smoke-tested in tests/test_adapters.py (`test_torch_export_*`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.export import ExportedProgram

__all__ = [
    "CIA",
    "HigherOrderOperator",
    "OpOverload",
    "OpOverloadPacket",
    "as_overload",
    "backed_size_oblivious",
    "custom_decomp_table",
    "draft_filenames",
    "draft_report",
    "fake_mode_of",
    "graph_index",
    "named_graph_copy",
    "has_kernel_for",
    "is_higher_order",
    "isolated_shape_env",
    "copied_from",
    "origin",
    "overload_name",
]

OpOverload = torch._ops.OpOverload
OpOverloadPacket = torch._ops.OpOverloadPacket
HigherOrderOperator = torch._ops.HigherOrderOperator
CIA = "CompositeImplicitAutograd"


# --- ops ------------------------------------------------------------------------------------

def overload_name(op: OpOverload) -> str:
    """"namespace.name.overload" ("aten.add.Tensor", "aten.relu.default"): the spelling of fx
    targets in OpenVINO's frontend and in dynexport's coverage reports."""
    return f"{op.namespace}.{op._schema.name.split('::')[-1]}.{op._overloadname}"


def as_overload(op: object) -> OpOverload:
    """The OpOverload of a `torch.library.custom_op` object, an OpOverload, a packet (its
    default overload) or "namespace::name[.overload]"."""
    if isinstance(op, OpOverload):
        return op
    if isinstance(op, torch._library.custom_ops.CustomOpDef):
        return op._opoverload
    if isinstance(op, OpOverloadPacket):
        return op.default
    if isinstance(op, str) and op.count("::") == 1:
        namespace, rest = op.split("::")
        name, _, overload = rest.partition(".")
        try:
            return getattr(getattr(getattr(torch.ops, namespace), name), overload or "default")
        except AttributeError as exc:
            raise ValueError(f"op: no torch op named {op!r}") from exc
    raise TypeError(f"op: expected a torch op (OpOverload, custom_op or 'ns::name'), got {op!r}")


def has_kernel_for(op: OpOverload, dispatch_key: str) -> bool:
    """True if the dispatcher holds a kernel of `op` for `dispatch_key` (e.g. `CIA`)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), dispatch_key)


def custom_decomp_table() -> dict:
    """torch.export's default decomposition table (a `CustomDecompTable`: every
    CompositeImplicitAutograd op, custom ones included, plus the core-ATen decompositions),
    which OpenVINO's frontend and `ep.run_decompositions()` use."""
    from torch.export.decomp_utils import CustomDecompTable

    return CustomDecompTable()


# --- fake tensors and ShapeEnv ---------------------------------------------------------------

def fake_mode_of(program: ExportedProgram) -> Any:
    """The FakeTensorMode of `program`'s node values, or None."""
    from torch._guards import detect_fake_mode

    return detect_fake_mode([node.meta.get("val") for node in program.graph.nodes])


@contextmanager
def isolated_shape_env(program: ExportedProgram) -> Iterator[None]:
    """Restore the program's pending unbacked symbols after the block.

    A program's fake tensors share one ShapeEnv. torch.onnx's re-trace of a program holding
    unbacked symbols (`.item()`, draft export) leaves fresh symbols pending there, and
    OpenVINO's own re-trace of the same program then fails with
    PendingUnbackedSymbolNotFound (measured, torch 2.13)."""
    shape_env = getattr(fake_mode_of(program), "shape_env", None)
    pending = list(shape_env.pending_fresh_unbacked_symbols) if shape_env else None
    try:
        yield
    finally:
        if shape_env is not None:
            shape_env.pending_fresh_unbacked_symbols[:] = pending


@contextmanager
def backed_size_oblivious() -> Iterator[None]:
    """Reason about backed sizes as if they could be anything >= 0 (not specialising on 0/1),
    as torch.onnx does when it re-traces a program with dynamic sizes."""
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        yield


# --- draft export ----------------------------------------------------------------------------

def draft_report(program: ExportedProgram) -> Any:
    """The `DraftExportReport` `torch.export.draft_export` attaches to its program (its
    `_report`: `.failures`, `.str_to_filename`), or None for other programs."""
    return getattr(program, "_report", None)


def draft_filenames(report: Any) -> dict[int, str]:
    """File names by intern index for a `DraftExportReport`'s frames. The report only holds
    the names first interned during its own export; torch's process-wide intern table
    (`torch._logging.structured.INTERN_TABLE`) has those of earlier exports (a second export
    in one process)."""
    from torch._logging import structured

    filenames = {index: name for name, index in structured.INTERN_TABLE.items()}
    filenames.update(report.str_to_filename)
    return filenames


# --- fx provenance ---------------------------------------------------------------------------

def graph_index(gm: torch.fx.GraphModule) -> dict[int, dict[str, torch.fx.Node]]:
    """graph id -> node name -> node, for `gm` and its subgraphs: the key of fx provenance."""
    return {
        id(module.graph): {node.name: node for node in module.graph.nodes}
        for module in gm.modules()
        if isinstance(module, torch.fx.GraphModule)
    }


def origin(node: torch.fx.Node, index: dict[int, dict[str, torch.fx.Node]]
           ) -> torch.fx.Node | None:
    """The node of the indexed program that `node` was (re)traced or decomposed from, found
    through `node.meta["from_node"]` (a chain of `torch.fx.traceback.NodeSource`)."""
    pending = list(node.meta.get("from_node") or ())
    while pending:
        source = pending.pop()
        found = index.get(source.graph_id, {}).get(source.name)
        if found is not None:
            return found
        pending.extend(source.from_node)
    return None


def named_graph_copy(graph: torch.fx.Graph) -> torch.fx.Graph:
    """A deep copy of `graph` whose nodes keep their names. `copy.deepcopy` renames a node
    whose name is a Python builtin (nn.Sequential's input, `input`, becomes `input_1`), which
    an ExportedProgram's signature still names."""
    import copy

    copied = copy.deepcopy(graph)
    for original, node in zip(graph.nodes, copied.nodes, strict=True):
        node.name = original.name  # code generation rebinds a builtin name itself
    return copied


def copied_from(node: torch.fx.Node) -> Any:
    """The `meta["from_node"]` entry saying a node was made from `node` (what `origin` follows;
    `torch.fx.traceback.NodeSource`, not backward compatible)."""
    from torch.fx.traceback import NodeSource, NodeSourceAction

    return NodeSource(node, "dynexport.decompose", NodeSourceAction.CREATE)


def is_higher_order(target: object, name: str | None = None) -> bool:
    """True if `target` is a higher-order operator (named `name`, if given)."""
    return isinstance(target, HigherOrderOperator) and (name is None or target.name() == name)


def has_unbacked_size(value: object) -> bool:
    """True for a fake tensor with a size that depends on data (an unbacked symbol, u0):
    the output of nonzero, of a boolean mask, of nms."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    return isinstance(value, torch.Tensor) and bool(free_unbacked_symbols(value.shape))
