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
"""

from __future__ import annotations

import functools
import logging
import operator
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.export import ExportedProgram

from dynexport.backends.shape_env import isolated_shape_env
from dynexport.custom_ops.registry import (
    onnx_translation_table,
    openvino_decoder_input,
    openvino_extensions,
)
from dynexport.decompositions import decompose, decomposition_table
from dynexport.hazards.location import location_from_stack_trace
from dynexport.hazards.records import Backend, Hazard, SourceLocation, UnsupportedOp

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "OpCoverage",
    "coverage_table",
    "op_coverage",
    "op_name",
    "translate_backend_error",
    "unsupported_op_hazards",
    "unsupported_ops",
]

BACKENDS: tuple[Backend, ...] = ("onnx", "openvino")
_log = logging.getLogger(__name__)


@dataclass
class OpCoverage:
    """One distinct op of a program and whether each backend can lower it."""

    op: str  # "namespace.name.overload"
    count: int
    onnx: bool
    openvino: bool
    decomposed_by_dynexport: bool
    location: SourceLocation | None  # the user's line of its first occurrence


def op_name(target: object) -> str:
    """"namespace.name.overload" for an OpOverload, "namespace.name" for other callables."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._schema.name.split('::')[-1]}.{target._overloadname}"
    if isinstance(target, torch._ops.HigherOrderOperator):
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


def _node_index(gm: torch.fx.GraphModule) -> dict[int, dict[str, torch.fx.Node]]:
    """graph id -> node name -> node, the key fx provenance (`from_node`) refers to."""
    return {
        id(module.graph): {node.name: node for node in module.graph.nodes}
        for module in gm.modules()
        if isinstance(module, torch.fx.GraphModule)
    }


def _origin(node: torch.fx.Node, index: dict[int, dict[str, torch.fx.Node]]
            ) -> torch.fx.Node | None:
    """The node of the indexed program that `node` was (re)traced or decomposed from."""
    pending = list(node.meta.get("from_node") or ())
    while pending:
        source = pending.pop()
        found = index.get(source.graph_id, {}).get(source.name)
        if found is not None:
            return found
        pending.extend(source.from_node)
    return None


def _node_op(node: torch.fx.Node) -> str:
    # torch.onnx wraps effectful ops (e.g. the _linalg_check_errors of linalg.inv) in the
    # with_effects HOP; the wrapped op is the one the user can relate to and act on.
    if isinstance(node.target, torch._ops.HigherOrderOperator) and \
            node.target.name() == "with_effects" and len(node.args) > 1:
        return op_name(node.args[1])
    return op_name(node.target)


def _location(nodes: Iterable[torch.fx.Node]) -> SourceLocation | None:
    for node in nodes:
        loc = location_from_stack_trace(node.meta.get("stack_trace"))
        if loc is not None:
            return loc
    return None


# --- what each backend cannot lower -----------------------------------------------------

@functools.lru_cache(maxsize=4)
def _onnx_registry(custom: tuple[tuple[object, Callable], ...]):
    # Building torchlib's registry takes ~1 s; the custom translations are part of the key.
    from torch.onnx._internal.exporter import _registration

    registry = _registration.ONNXRegistry.from_torchlib()
    for target, function in custom:
        registry.register_op(target, function, is_complex=False)
    return registry


def _onnx_failures(ep: ExportedProgram) -> list[torch.fx.Node]:
    """Nodes of torch.onnx's own prepared program that its dispatcher finds no function for."""
    from torch.onnx._internal.exporter import _core, _dispatching

    registry = _onnx_registry(tuple(onnx_translation_table().items()))
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        try:
            prepared = _core._prepare_exported_program_for_export(ep, registry=registry)
        except Exception as exc:  # the backend would fail before translating any op
            _log.warning("torch.onnx could not decompose the program (%s); "
                         "ONNX coverage is judged on the program as given", exc)
            prepared = ep
    return [
        node for node in _op_nodes(prepared.graph_module)
        if not _core._is_onnx_op(node.target)
        and _dispatching.dispatch(node, registry)[0] is None
    ]


class _DropOpenVINODecompWarnings(logging.Filter):
    # OpenVINO logs a traceback on the root logger for each op missing from torch's table.
    def filter(self, record: logging.LogRecord) -> bool:
        return "openvino" not in record.pathname


@contextmanager
def _quiet_openvino() -> Iterator[None]:
    root = logging.getLogger()
    quiet = _DropOpenVINODecompWarnings()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _openvino_failures(ep: ExportedProgram) -> list[torch.fx.Node]:
    """fx nodes that OpenVINO's PyTorch frontend leaves unconverted (framework nodes)."""
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

    # The same decoder input dynexport's OpenVINO stage converts: it keeps the custom ops that
    # have a ConversionExtension.
    with _quiet_openvino():
        try:
            decoder = openvino_decoder_input(ep)
        except Exception as exc:
            _log.warning("OpenVINO could not decompose the program (%s); "
                         "OpenVINO coverage is judged on the program as given", exc)
            decoder = TorchFXPythonDecoder(ep.module())
        frontend = FrontEndManager().load_by_framework("pytorch")
        for extension in openvino_extensions():
            frontend.add_extension(extension)
        model = frontend.convert_partially(frontend.load(decoder))
    # The decoder names each OpenVINO node "<fx node name>/<op type>".
    by_name = {node.name: node for node in _op_nodes(decoder.fx_gm)}
    failures = []
    for op in model.get_ordered_ops():
        if "FrameworkNode" in op.get_type_name():
            node = by_name.get(op.get_friendly_name().split("/", 1)[0])
            if node is not None:
                failures.append(node)
    return failures


_FAILURES: dict[Backend, Callable[[ExportedProgram], list[torch.fx.Node]]] = {
    "onnx": _onnx_failures,
    "openvino": _openvino_failures,
}


@dataclass
class _Analysis:
    program: ExportedProgram  # as given
    decomposed: ExportedProgram  # what dynexport's conversion stages receive
    failures: dict[Backend, list[torch.fx.Node]]  # nodes of each backend's own program


def _analyze(ep: ExportedProgram, backends: Sequence[Backend]) -> _Analysis:
    decomposed = decompose(ep)
    failures = {}
    for backend in backends:
        with isolated_shape_env(decomposed):
            failures[backend] = _FAILURES[backend](decomposed)
    return _Analysis(ep, decomposed, failures)


# --- public API ---------------------------------------------------------------------------

def op_coverage(ep: ExportedProgram) -> list[OpCoverage]:
    """One row per distinct op of `ep` (as captured or already decomposed), in graph order.

    `onnx` / `openvino` say whether every occurrence converts after dynexport's
    decompositions and the backend's own; a backend op that cannot be traced back to an op
    of `ep` gets a row of its own.
    """
    analysis = _analyze(ep, BACKENDS)
    index = _node_index(ep.graph_module)
    nodes_by_op: dict[str, list[torch.fx.Node]] = defaultdict(list)
    for node in _op_nodes(ep.graph_module):
        nodes_by_op[op_name(node.target)].append(node)
    remaining = {op_name(node.target) for node in _op_nodes(analysis.decomposed.graph_module)}
    table = {op_name(op) for op in decomposition_table()}

    failing: dict[str, set[Backend]] = defaultdict(set)
    for backend, nodes in analysis.failures.items():
        for node in nodes:
            origin = _origin(node, index)
            name = op_name(origin.target) if origin is not None else _node_op(node)
            failing[name].add(backend)
            if origin is None:
                nodes_by_op[name].append(node)

    return [
        OpCoverage(
            op=name,
            count=len(nodes),
            onnx="onnx" not in failing[name],
            openvino="openvino" not in failing[name],
            decomposed_by_dynexport=name in table and name not in remaining,
            location=_location(nodes),
        )
        for name, nodes in nodes_by_op.items()
    ]


def unsupported_ops(ep: ExportedProgram,
                    backends: Sequence[Backend] = BACKENDS) -> list[UnsupportedOp]:
    """Every op a backend cannot lower in `decompose(ep)`, named as that backend sees it,
    one record per op, backend and user line."""
    analysis = _analyze(ep, backends)
    index = _node_index(ep.graph_module)
    groups: Counter[tuple[Backend, str, SourceLocation | None]] = Counter()
    for backend, nodes in analysis.failures.items():
        for node in nodes:
            origin = _origin(node, index)
            loc = _location([node] + ([origin] if origin is not None else []))
            groups[(backend, _node_op(node), loc)] += 1
    return [
        UnsupportedOp(op=op, backend=backend, count=count,
                      file=loc.file if loc else None, line=loc.line if loc else None,
                      code=loc.code if loc else None)
        for (backend, op, loc), count in groups.items()
    ]


_BACKEND_NAMES = {"onnx": "ONNX (torch.onnx)", "openvino": "OpenVINO"}
# What the exporters' own tables turn a declined inverse / det / solve into.
_LINALG_INTERNALS = {"aten._linalg_check_errors.default", "aten._linalg_det.default",
                     "aten._linalg_solve_ex.default"}


def _fix(op: str, backend: Backend) -> str:
    if op in {op_name(o) for o in decomposition_table()} | _LINALG_INTERNALS:
        return ("dynexport decomposes inverse, det and solve only for float32/float64 "
                "matrices of static size up to 8x8: keep the size static and the dtype "
                "float32/float64, or compute the result outside the model and pass it in "
                "as an input")
    if not op.startswith(("aten.", "prims.")):
        return (f"this custom op has no {backend} translation registered; add one with the "
                "dynexport.custom_ops kit (see dynexport/custom_ops/README.md)")
    return ("rewrite the line with ops both backends support; or wrap it in a custom op "
            "and register per-backend translations with the dynexport.custom_ops kit; "
            "or add a decomposition for it to dynexport/decompositions/")


def unsupported_op_hazards(ops: list[UnsupportedOp]) -> list[Hazard]:
    """An `unsupported_op` error hazard for each record (contract §4)."""
    return [
        Hazard(
            category="unsupported_op",
            severity="error",
            file=rec.file,
            line=rec.line,
            code=rec.code,
            message=(f"{_BACKEND_NAMES[rec.backend]} has no lowering for {rec.op} "
                     f"({rec.count} use{'s' if rec.count != 1 else ''}); "
                     f"the {rec.backend} conversion fails here"),
            fix=_fix(rec.op, rec.backend),
        )
        for rec in ops
    ]


_ONNX_MISSING = re.compile(
    r"No ONNX function found for (?:<OpOverload\(op='(?P<op>[\w.]+)', overload='(?P<ov>\w+)'\)>"
    r"|(?P<other>[^.\s][^\n]*?))\. Failure message"
)
_OPENVINO_MISSING = re.compile(
    r"-- (?:No conversion rule found for operations|Conversion is failed for): (?P<ops>[^\n]+)"
)


def _exception_text(exc: BaseException) -> str:
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def translate_backend_error(exc: BaseException, backend: Backend,
                            program: ExportedProgram | None = None
                            ) -> list[UnsupportedOp] | None:
    """The unsupported ops a raw exporter exception names, or None if it names none.

    With `program`, each op found there gets its count and the user's line; ops the backend
    produced by its own decomposition are not in the program and keep file/line None (the
    preflight, `unsupported_ops`, locates those too).
    """
    text = _exception_text(exc)
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
    """The `python -m dynexport ops` table: op, count, ONNX, OpenVINO, decomposed, source."""
    from rich.table import Table  # rich is needed only for the CLI table

    def mark(ok: bool) -> str:
        return "[green]✓[/]" if ok else "[bold red]✗[/]"

    table = Table(title="Operator coverage", show_lines=False)
    table.add_column("op", style="cyan", no_wrap=True)
    table.add_column("count", justify="right")
    table.add_column("ONNX", justify="center")
    table.add_column("OpenVINO", justify="center")
    table.add_column("decomposed by dynexport", justify="center")
    table.add_column("source")
    ordered = sorted(rows, key=lambda r: (r.onnx and r.openvino, r.op))  # failures first
    for row in ordered:
        loc = row.location
        source = f"{Path(loc.file).name}:{loc.line}  {loc.code}" if loc else ""
        table.add_row(row.op, str(row.count), mark(row.onnx), mark(row.openvino),
                      "yes" if row.decomposed_by_dynexport else "", source)
    return table
