"""The custom-op kit: an op's backend translations, declared next to its kernel.

An op module defines its op with `torch.library` (kernel, fake kernel, autograd) and then
calls `register(op, decomposition=..., onnx=..., openvino=...)` once. This module keeps the
records and hands each backend what it needs:

* `onnx_translation_table()` → `torch.onnx.export(..., custom_translation_table=...)`;
* `openvino_extensions()` + `openvino_decoder_input(ep)` → `openvino.convert_model`;
* `registered_ops()` → the coverage preflight (which ops are translated where).

See README.md next to this file for why the decomposition is registered as the op's
CompositeImplicitAutograd kernel and why OpenVINO needs its own decoder input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.export import ExportedProgram

if TYPE_CHECKING:
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

__all__ = [
    "CustomOp",
    "onnx_translation_table",
    "openvino_decoder_input",
    "openvino_extensions",
    "register",
    "registered_ops",
]

_CIA = "CompositeImplicitAutograd"


@dataclass(frozen=True)
class CustomOp:
    """One registered op and its translations.

    `onnx` is an onnxscript function (a plain Python function calling `opsetNN` ops, traced
    by torch.onnx) whose parameters are named like the op's schema arguments. `openvino`
    takes an `openvino.frontend.NodeContext` and returns the list of output `Output`s.
    """

    op: torch._ops.OpOverload
    onnx: Callable[..., Any] | None = None
    openvino: Callable[[Any], list] | None = None

    @property
    def name(self) -> str:
        """"namespace.name.overload", the spelling of coverage reports and OpenVINO."""
        return f"{self.op.namespace}.{self.op._schema.name.split('::')[-1]}.{self.op._overloadname}"

    @property
    def has_onnx(self) -> bool:
        return self.onnx is not None

    @property
    def has_openvino(self) -> bool:
        return self.openvino is not None

    @property
    def has_decomposition(self) -> bool:
        """True if the op decomposes into aten ops (a CompositeImplicitAutograd kernel), which
        plain `openvino.convert_model(ep)` and `torch.onnx.export(ep)` apply by themselves."""
        return torch._C._dispatch_has_kernel_for_dispatch_key(self.op.name(), _CIA)


_REGISTRY: dict[torch._ops.OpOverload, CustomOp] = {}
# torch.library registrations live as long as their Library object.
_LIBRARIES: dict[str, torch.library.Library] = {}


def _overload(op: object) -> torch._ops.OpOverload:
    if isinstance(op, torch._ops.OpOverload):
        return op
    if isinstance(op, torch._library.custom_ops.CustomOpDef):
        return op._opoverload
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op.default
    if isinstance(op, str):  # "namespace::name" or "namespace::name.overload"
        namespace, rest = op.split("::")
        name, _, overload = rest.partition(".")
        return getattr(getattr(getattr(torch.ops, namespace), name), overload or "default")
    raise TypeError(f"expected a torch op (OpOverload, custom_op or 'ns::name'), got {op!r}")


def register(op: object, *, decomposition: Callable[..., Any] | None = None,
             onnx: Callable[..., Any] | None = None,
             openvino: Callable[[Any], list] | None = None) -> CustomOp:
    """Register `op`'s translations; call once from the op's own module.

    `decomposition` (same signature as the op, written with portable aten ops) becomes the
    op's CompositeImplicitAutograd kernel: eager calls keep using the op's own kernel and
    autograd, torch.export keeps the op in the graph, and consumers' default decomposition
    passes (plain `openvino.convert_model(ep)`, `torch.onnx.export(ep)`) replace it by the
    decomposition. `onnx` and `openvino` are what dynexport's own conversions use instead.
    """
    overload = _overload(op)
    if overload in _REGISTRY:
        raise ValueError(f"{overload.name()} is already registered with dynexport")
    if decomposition is not None:
        namespace = overload.namespace
        library = _LIBRARIES.setdefault(namespace, torch.library.Library(namespace, "FRAGMENT"))
        library.impl(overload.name(), decomposition, _CIA)
    record = CustomOp(op=overload, onnx=onnx, openvino=openvino)
    _REGISTRY[overload] = record
    return record


def registered_ops() -> list[CustomOp]:
    """Every registered op, in registration order."""
    return list(_REGISTRY.values())


def onnx_translation_table() -> dict[torch._ops.OpOverload, Callable[..., Any]]:
    """`custom_translation_table` for `torch.onnx.export(ep, dynamo=True, ...)`.

    torch.onnx leaves an op with a translation out of its decomposition table, so the
    op reaches the translation intact instead of being decomposed first.
    """
    return {rec.op: rec.onnx for rec in _REGISTRY.values() if rec.onnx is not None}


def openvino_extensions() -> list:
    """`ConversionExtension`s for `openvino.convert_model(..., extension=...)`; they only
    see their op if the input comes from `openvino_decoder_input`."""
    if not any(rec.openvino for rec in _REGISTRY.values()):
        return []
    from openvino.frontend.pytorch import ConversionExtension

    return [ConversionExtension(rec.name, rec.openvino)
            for rec in _REGISTRY.values() if rec.openvino is not None]


def openvino_decoder_input(program: ExportedProgram) -> TorchFXPythonDecoder:
    """What to pass to `openvino.convert_model` (with `extension=openvino_extensions()`)
    instead of `program`.

    `convert_model(ep)` decomposes the program with torch's default table minus OpenVINO's
    `ops_to_not_decompose()`, and that table decomposes every CompositeImplicitAutograd
    op, ours included, before any ConversionExtension is consulted. This builds the same
    decoder from the same table, except that registered ops with an OpenVINO conversion
    are kept (torch >= 2.6).
    """
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder
    from openvino.frontend.pytorch.torchdynamo.export_decompositions import (
        ops_to_not_decompose,
    )
    from torch.export.decomp_utils import CustomDecompTable

    table = CustomDecompTable()
    kept = list(ops_to_not_decompose())
    kept += [rec.op for rec in _REGISTRY.values() if rec.openvino is not None]
    for op in kept:
        table.pop(op, None)
    decomposed = program.run_decompositions(table)
    return TorchFXPythonDecoder(decomposed.module(), dynamic_shapes=True)
