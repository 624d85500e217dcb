"""Decompositions dynexport.export applies so that ops the backends lack convert.

`decompose(ep)` is the pipeline's "decompose" step. It replaces exactly the nodes of the ops
`decomposition_table()` names (splice.py: each traced on its own, no re-trace of the program)
and keeps every other op as captured, including the CompositeImplicitAutograd ops torch.export
preserves and custom ops (dynexport::*), so the program stays as general as the capture made
it. Each other module here holds one op family's decompositions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.export import ExportedProgram

from dynexport.adapters.torch_export import OpOverload
from dynexport.decompositions import grid_sample, inverse, pooling, scatter, search, unique
from dynexport.decompositions.attention_layout import pin_attention_layouts
from dynexport.decompositions.map_unroll import unroll_static_maps
from dynexport.decompositions.splice import SpliceUnsupported, splice_decompositions

__all__ = ["declined_fixes", "decompose", "decomposition_table", "program_ops"]

# One module per op family: its table() and the DECLINED fix of the calls it leaves.
_FAMILIES = (grid_sample, inverse, pooling, scatter, search, unique)


def decomposition_table() -> dict[OpOverload, Callable]:
    """Every op dynexport decomposes, mapped to its decomposition (a fresh dict)."""
    table: dict[OpOverload, Callable] = {}
    for family in _FAMILIES:
        table.update(family.table())
    # dynexport's own custom ops must reach the backends intact for their translations.
    return {op: fn for op, fn in table.items() if op.namespace != "dynexport"}


def declined_fixes() -> dict[OpOverload, str]:
    """Each op dynexport decomposes → what to change in the model where a backend still fails
    on it (its decomposition declined that call: a 16x16 inverse, a boolean-mask write)."""
    return {op: family.DECLINED for family in _FAMILIES for op in family.table()}


def program_ops(ep: ExportedProgram) -> set[object]:
    """Targets of all call_function nodes, including those in control-flow subgraphs."""
    return {
        node.target
        for module in ep.graph_module.modules()
        if isinstance(module, torch.fx.GraphModule)
        for node in module.graph.nodes
        if node.op == "call_function"
    }


def decompose(ep: ExportedProgram) -> ExportedProgram:
    """Apply dynexport's decompositions (and unroll `map` over static sizes, map_unroll.py;
    pin the output layout of attentions, attention_layout.py); returns `ep` itself when none
    of its ops is in the table and nothing was unrolled or pinned.

    Ops whose decomposition declines the input (e.g. a 16x16 or symbolic-size inverse)
    stay in the graph, where the coverage preflight reports them.
    """
    ep = pin_attention_layouts(unroll_static_maps(ep))
    table = decomposition_table()
    if not program_ops(ep) & table.keys():
        return ep
    try:
        return splice_decompositions(ep, table)
    except SpliceUnsupported:
        # torch's own way, which lifts what a decomposition creates: a re-trace of every node
        return ep.run_decompositions(table)
