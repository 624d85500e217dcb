"""Conversion coverage: which ops of a program each backend can lower, before converting.

The answer comes from the exporters themselves, on the program each of them really sees:

* ONNX: torch.onnx's own preparation (its decomposition table for the ops torchlib lacks,
  type promotion, assertion removal) followed by its dispatcher, against torchlib's
  registry plus dynexport's custom translations.
* OpenVINO: the PyTorch frontend's own decoder (which applies OpenVINO's decomposition
  table) and `convert_partially`; every node left as a framework node is unconverted.

Both run on `decompose(ep)`, i.e. what dynexport's conversion stages get. A backend op is
traced back to the op of the given program through the fx `from_node` provenance, so the
coverage table lists the user's ops while the unsupported-op records name the op the
backend actually lacks, each with the user's source line.

Where a backend's own preparation of the program fails, coverage is judged on the program as
given instead; the results (`CoverageResult`, a list) then carry a note saying so in `.notes`.
Every torch.onnx / OpenVINO / torch internal used here goes through `dynexport.adapters`.
"""

from __future__ import annotations

import operator
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import torch
from torch.export import ExportedProgram

from dynexport.adapters import openvino_frontend, torch_onnx
from dynexport.adapters.torch_export import (
    OpOverload,
    backed_size_oblivious,
    graph_index,
    is_higher_order,
    isolated_shape_env,
    origin,
    overload_name,
)
from dynexport.custom_ops.registry import OpRegistry, resolve
from dynexport.decompositions import decompose, decomposition_table
from dynexport.errors import chain_text
from dynexport.hazards.location import location_from_stack_trace
from dynexport.hazards.records import Backend, SourceLocation, UnsupportedOp
from dynexport.names import BACKENDS

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "CoverageResult",
    "OpCoverage",
    "coverage_table",
    "op_coverage",
    "op_name",
    "translate_backend_error",
    "unsupported_ops",
]

# What a backend's own preparation of a program raises when it cannot trace or decompose it
# (torch errors, including GuardOnDataDependentSymNode and PendingUnbackedSymbolNotFound, are
# RuntimeErrors). Anything else is a bug to surface, not a weaker coverage answer.
_PREPARATION_ERRORS = (RuntimeError,)
T = TypeVar("T")


class CoverageResult(list[T], Generic[T]):
    """A list of coverage rows or records, plus `notes`: what weakened the answer (a backend
    whose own program preparation failed, so the program as given was judged instead)."""

    def __init__(self, items: Iterable[T] = (), notes: Iterable[str] = ()) -> None:
        super().__init__(items)
        self.notes: list[str] = list(notes)


@dataclass
class OpCoverage:
    """One distinct op of a program and whether each backend can lower it."""

    op: str  # "namespace.name.overload"
    count: int
    onnx: bool
    openvino: bool
    decomposed_by_dynexport: bool
    location: SourceLocation | None  # the user's line of its first occurrence
    lowering: str | None = None  # an op of the registry: how each backend gets it


def op_name(target: object) -> str:
    """"namespace.name.overload" for an OpOverload, "namespace.name" for other callables."""
    if isinstance(target, OpOverload):
        return overload_name(target)
    if is_higher_order(target):
        return f"higher_order.{target.name()}"
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{getattr(target, '__name__', str(target))}"


# --- walking programs -------------------------------------------------------------------

def _op_nodes(gm: torch.fx.GraphModule) -> Iterator[torch.fx.Node]:
    """call_function nodes of `gm` and its control-flow subgraphs; getitem is plumbing."""
    for module in gm.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                if node.op == "call_function" and node.target is not operator.getitem:
                    yield node


def _node_op(node: torch.fx.Node) -> str:
    # torch.onnx wraps effectful ops (e.g. the _linalg_check_errors of linalg.inv) in the
    # with_effects HOP; the wrapped op is the one the user can relate to and act on.
    if is_higher_order(node.target, "with_effects") and len(node.args) > 1:
        return op_name(node.args[1])
    return op_name(node.target)


def _location(nodes: Iterable[torch.fx.Node]) -> SourceLocation | None:
    for node in nodes:
        loc = location_from_stack_trace(node.meta.get("stack_trace"))
        if loc is not None:
            return loc
    return None


# --- what each backend cannot lower -----------------------------------------------------

def _onnx_failures(ep: ExportedProgram, registry: OpRegistry
                   ) -> tuple[list[torch.fx.Node], list[str]]:
    """Nodes of torch.onnx's own prepared program that its dispatcher finds no function
    for, and notes."""
    onnx_registry = torch_onnx.onnx_registry(registry.onnx_translation_table().items())
    notes = []
    with backed_size_oblivious():
        try:
            prepared = torch_onnx.prepare_for_export(ep, onnx_registry)
        except _PREPARATION_ERRORS as exc:  # the backend would fail before translating any op
            prepared = ep
            notes.append("ONNX coverage is judged on the program as given: torch.onnx could "
                         f"not decompose it ({_first_line(exc)})")
    failures = [
        node for node in _op_nodes(prepared.graph_module)
        if not torch_onnx.is_onnx_op(node.target)
        and not torch_onnx.has_translation(node, onnx_registry)
    ]
    return failures, notes


def _openvino_failures(ep: ExportedProgram, registry: OpRegistry
                       ) -> tuple[list[torch.fx.Node], list[str]]:
    """fx nodes that OpenVINO's PyTorch frontend leaves unconverted (framework nodes), and
    notes."""
    notes = []
    # The same decoder input dynexport's OpenVINO stage converts: it keeps the custom ops that
    # have a ConversionExtension.
    with openvino_frontend.quiet_openvino():
        try:
            decoder = registry.openvino_decoder_input(ep)
        except _PREPARATION_ERRORS as exc:
            decoder = openvino_frontend.decoder(ep.module())
            notes.append("OpenVINO coverage is judged on the program as given: OpenVINO's "
                         f"decomposition table could not be applied ({_first_line(exc)})")
        model = openvino_frontend.convert_partially(decoder, registry.openvino_extensions())
    by_name = {node.name: node
               for node in _op_nodes(openvino_frontend.decoder_graph_module(decoder))}
    failures = [by_name[name] for name in openvino_frontend.framework_node_names(model)
                if name in by_name]
    return failures, notes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


_FAILURES: dict[Backend, Callable[[ExportedProgram, OpRegistry],
                                  tuple[list[torch.fx.Node], list[str]]]] = {
    "onnx": _onnx_failures,
    "openvino": _openvino_failures,
}


@dataclass
class _Analysis:
    program: ExportedProgram  # as given
    decomposed: ExportedProgram  # what dynexport's conversion stages receive
    failures: dict[Backend, list[torch.fx.Node]]  # nodes of each backend's own program
    notes: list[str] = field(default_factory=list)


def _analyze(ep: ExportedProgram, backends: Sequence[Backend],
             registry: OpRegistry | None) -> _Analysis:
    registry = resolve(registry)
    decomposed = decompose(ep)
    analysis = _Analysis(ep, decomposed, {})
    for backend in backends:
        with isolated_shape_env(decomposed):
            analysis.failures[backend], notes = _FAILURES[backend](decomposed, registry)
        analysis.notes += notes
    return analysis


# --- public API ---------------------------------------------------------------------------

def kit_lowering(target: object, registry: OpRegistry | None = None) -> str | None:
    """"ONNX: ...; OpenVINO: ..." for an op of the registry (the op kit), else None."""
    record = resolve(registry).get(target) if isinstance(target, OpOverload) else None
    if record is None:
        return None
    return f"ONNX: {record.lowering('onnx')}; OpenVINO: {record.lowering('openvino')}"


def op_coverage(ep: ExportedProgram, registry: OpRegistry | None = None
                ) -> CoverageResult[OpCoverage]:
    """One row per distinct op of `ep` (as captured or already decomposed), in graph order.

    `onnx` / `openvino` say whether every occurrence converts after dynexport's
    decompositions and the backend's own, with the custom-op translations of `registry`
    (None: the default registry); a backend op that cannot be traced back to an op of `ep`
    gets a row of its own. `.notes` on the result says where the answer is weaker.
    """
    analysis = _analyze(ep, BACKENDS, registry)
    index = graph_index(ep.graph_module)
    nodes_by_op: dict[str, list[torch.fx.Node]] = defaultdict(list)
    for node in _op_nodes(ep.graph_module):
        nodes_by_op[op_name(node.target)].append(node)
    remaining = {op_name(node.target) for node in _op_nodes(analysis.decomposed.graph_module)}
    table = {op_name(op) for op in decomposition_table()}

    failing: dict[str, set[Backend]] = defaultdict(set)
    for backend, nodes in analysis.failures.items():
        for node in nodes:
            source = origin(node, index)
            name = op_name(source.target) if source is not None else _node_op(node)
            failing[name].add(backend)
            if source is None:
                nodes_by_op[name].append(node)

    return CoverageResult([
        OpCoverage(
            op=name,
            count=len(nodes),
            onnx="onnx" not in failing[name],
            openvino="openvino" not in failing[name],
            decomposed_by_dynexport=name in table and name not in remaining,
            location=_location(nodes),
            lowering=kit_lowering(nodes[0].target, registry),
        )
        for name, nodes in nodes_by_op.items()
    ], analysis.notes)


def unsupported_ops(ep: ExportedProgram, backends: Sequence[Backend] = BACKENDS,
                    registry: OpRegistry | None = None) -> CoverageResult[UnsupportedOp]:
    """Every op a backend cannot lower in `decompose(ep)` with the custom-op translations of
    `registry` (None: the default registry), named as that backend sees it, one record per
    op, backend and user line. `.notes` on the result says where the answer is weaker."""
    analysis = _analyze(ep, backends, registry)
    index = graph_index(ep.graph_module)
    groups: Counter[tuple[Backend, str, SourceLocation | None]] = Counter()
    for backend, nodes in analysis.failures.items():
        for node in nodes:
            source = origin(node, index)
            loc = _location([node] + ([source] if source is not None else []))
            groups[(backend, _node_op(node), loc)] += 1
    return CoverageResult([
        UnsupportedOp(op=op, backend=backend, count=count,
                      file=loc.file if loc else None, line=loc.line if loc else None,
                      code=loc.code if loc else None)
        for (backend, op, loc), count in groups.items()
    ], analysis.notes)


_ONNX_MISSING = re.compile(
    r"No ONNX function found for (?:<OpOverload\(op='(?P<op>[\w.]+)', overload='(?P<ov>\w+)'\)>"
    r"|(?P<other>[^.\s][^\n]*?))\. Failure message"
)
_OPENVINO_MISSING = re.compile(
    r"-- (?:No conversion rule found for operations|Conversion is failed for): (?P<ops>[^\n]+)"
)


def translate_backend_error(exc: BaseException, backend: Backend,
                            program: ExportedProgram | None = None,
                            registry: OpRegistry | None = None
                            ) -> list[UnsupportedOp] | None:
    """The unsupported ops a raw exporter exception names, or None if it names none.

    With `program`, each op found there gets its count and the user's line; ops the backend
    produced by its own decomposition are not in the program and keep file/line None (the
    preflight, `unsupported_ops`, locates those too). `registry` (the one the failed
    conversion used; None: the default) is checked for type only: the error text alone
    names the ops.
    """
    resolve(registry)
    text = chain_text(exc)
    if backend == "onnx":
        names = [f"{m['op']}.{m['ov']}" if m["op"] else m["other"].strip()
                 for m in _ONNX_MISSING.finditer(text)]
    else:
        names = [name.strip() for m in _OPENVINO_MISSING.finditer(text)
                 for name in m["ops"].split(",") if name.strip()]
    if not names:
        return None
    nodes_by_op: dict[str, list[torch.fx.Node]] = defaultdict(list)
    if program is not None:
        for node in _op_nodes(program.graph_module):
            nodes_by_op[op_name(node.target)].append(node)
    records = []
    for name in dict.fromkeys(names):
        nodes = nodes_by_op.get(name, [])
        loc = _location(nodes)
        records.append(UnsupportedOp(op=name, backend=backend, count=max(len(nodes), 1),
                                     file=loc.file if loc else None,
                                     line=loc.line if loc else None,
                                     code=loc.code if loc else None))
    return records


def coverage_table(rows: list[OpCoverage]) -> Table:
    """The `python -m dynexport ops` table: op, count, ONNX, OpenVINO, decomposed, source;
    the `notes` of an `op_coverage` result as its caption."""
    from rich.markup import escape
    from rich.table import Table  # rich is needed only for the CLI table

    def mark(ok: bool) -> str:
        return "[green]✓[/]" if ok else "[bold red]✗[/]"

    notes = getattr(rows, "notes", [])
    table = Table(title="Operator coverage", show_lines=False,
                  caption="\n".join(f"[yellow]note:[/] {escape(n)}" for n in notes) or None,
                  caption_justify="left")
    table.add_column("op", style="cyan", no_wrap=True)
    table.add_column("count", justify="right")
    table.add_column("ONNX", justify="center")
    table.add_column("OpenVINO", justify="center")
    table.add_column("decomposed by dynexport", justify="center")
    table.add_column("source")
    table.add_column("dynexport op kit: how each backend gets it")
    ordered = sorted(rows, key=lambda r: (r.onnx and r.openvino, r.op))  # failures first
    for row in ordered:
        loc = row.location
        source = f"{Path(loc.file).name}:{loc.line}  {loc.code}" if loc else ""
        table.add_row(row.op, str(row.count), mark(row.onnx), mark(row.openvino),
                      "yes" if row.decomposed_by_dynexport else "", source,
                      escape(row.lowering or ""))
    return table
