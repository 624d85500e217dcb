"""The nodes of an ONNX model that onnxruntime's CPU kernels compute with a data race.

Read from onnxruntime's source (core/providers/cpu/tensor/, the kernels of onnxruntime 1.32):

- **ScatterND with reduction add, mul, min or max races.** scatter_nd.cc,
  `ScatterNDDispatchTarget::operator()`: the update slices are split over the intra-op threads
  by `concurrency::ThreadPool::TryParallelFor`, and each slice is applied to its destination
  with a plain read-modify-write (`Func_Add_ND`, `Func_Mul_ND`, `Func_Min_ND`, `Func_Max_ND`).
  When two slices aim at one destination (repeated indices) and land on two threads, one
  update can be lost: the result is wrong, and differs from run to run (onnxruntime #18048,
  #23396). The thread pool splits the loop only when its cost model finds enough work (rows x
  row size); a small scatter runs on one thread and shows nothing.
- ScatterND without reduction runs the same loop, but the ONNX spec forbids repeated indices
  there (dynexport's own translations write each cell once), so it is not listed.
- ScatterElements, with any reduction, does not race. scatter.cc, `ScatterData`: the work is
  split by position across the scatter axis (one unit per (outer, inner) position, or per
  block of a contiguous run), and each unit walks the axis in ascending order, so no two
  threads write one element and every element sums in index order, as one thread would.

Nodes are found in the main graph, in control-flow subgraphs (If, Loop, Scan) and inside
ONNX functions (model.functions, e.g. a custom op's translation); a node inside a function
takes its provenance from the node that calls the function.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

# op_type -> the values of its "reduction" attribute whose kernel races.
RACING_REDUCTIONS = {"ScatterND": frozenset({"add", "mul", "min", "max"})}

# Metadata torch.onnx's dynamo exporter writes on every node it emits.
FX_NODE_KEY = "pkg.torch.onnx.fx_node"  # "%index_put : [num_users=1] = call_function[...]"
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"
_FX_NODE_NAME = re.compile(r"%(\S+) :")

_ONNX_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class RacyNode:
    """One node whose onnxruntime CPU kernel races, and where it came from."""

    name: str  # the ONNX node's name, e.g. "node_ScatterND_25"
    op_type: str
    reduction: str
    fx_node: str | None  # the FX node torch.onnx lowered it from, e.g. "index_put"
    stack_trace: str | None  # the user's code that made that FX node, as torch.onnx wrote it
    function: str | None = None  # "domain::name" of the ONNX function holding it

    def describe(self) -> str:
        """E.g. "ScatterND(reduction=add) node_ScatterND_25 (from FX node index_put)"."""
        where = f" in function {self.function}" if self.function else ""
        source = f" (from FX node {self.fx_node})" if self.fx_node else ""
        return f"{self.op_type}(reduction={self.reduction}) {self.name}{where}{source}"


def has_racy_nodes(path: str | os.PathLike) -> bool:
    """Whether the ONNX file at `path` has a racy node. The graph is read (which imports onnx,
    slow to import) only when the file's bytes hold the name of a racing op type at all:
    protobuf stores an op_type as its plain UTF-8 bytes."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if all(data.find(op_type.encode()) < 0 for op_type in RACING_REDUCTIONS):
            return False
    return bool(racy_nodes(path))


def racy_nodes(model: onnx.ModelProto | str | os.PathLike) -> list[RacyNode]:
    """Every node of `model` (a ModelProto or the path of one; weights are not read) whose
    onnxruntime CPU kernel races when its indices repeat and the session has several
    intra-op threads, in graph order."""
    import onnx  # here: the pipeline's own process never needs it (ml_dtypes is slow to load)

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    functions = {(f.domain, f.name): f for f in model.functions}
    return [_racy(node, origin, function)
            for node, origin, function in _walk(model.graph.node, None, None, functions, ())
            if _races(node)]


def _walk(nodes, origin: onnx.NodeProto | None, function: str | None,
          functions: dict[tuple[str, str], onnx.FunctionProto],
          calling: tuple[tuple[str, str], ...]) -> Iterator[tuple]:
    """(node, the top-level node it belongs to, its function) for every node reachable from
    `nodes`: subgraphs and called functions included (a recursive call is followed once)."""
    for node in nodes:
        top = origin or node
        yield node, top, function
        for attribute in node.attribute:
            for graph in (*([attribute.g] if attribute.HasField("g") else ()),
                          *attribute.graphs):
                yield from _walk(graph.node, top, function, functions, calling)
        key = (node.domain, node.op_type)
        if key in functions and key not in calling:
            yield from _walk(functions[key].node, top, "::".join(key), functions,
                             (*calling, key))


def _races(node: onnx.NodeProto) -> bool:
    return (node.domain in _ONNX_DOMAINS
            and _reduction(node) in RACING_REDUCTIONS.get(node.op_type, ()))


def _reduction(node: onnx.NodeProto) -> str:
    for attribute in node.attribute:
        if attribute.name == "reduction":
            return attribute.s.decode()
    return "none"  # the spec's default


def _racy(node: onnx.NodeProto, origin: onnx.NodeProto, function: str | None) -> RacyNode:
    metadata = {entry.key: entry.value for entry in node.metadata_props}
    # A node inside a function carries no metadata of its own: its call site's tells.
    for entry in origin.metadata_props:
        metadata.setdefault(entry.key, entry.value)
    found = _FX_NODE_NAME.match(metadata.get(FX_NODE_KEY, ""))
    return RacyNode(node.name, node.op_type, _reduction(node),
                    found.group(1) if found else None, metadata.get(STACK_TRACE_KEY), function)
