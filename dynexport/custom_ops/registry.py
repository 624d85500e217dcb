"""The custom-op kit: an op's backend translations, declared next to its kernel.

An op module defines its op with `torch.library` (kernel, fake kernel, autograd) and then
calls `register(op, decomposition=..., onnx=..., openvino=...)` once. An `OpRegistry` keeps
the records and hands each backend what it needs:

* `onnx_translation_table()` → `torch.onnx.export(..., custom_translation_table=...)`;
* `openvino_extensions()` + `openvino_decoder_input(ep)` → `openvino.convert_model`;
* `ops()` → the coverage preflight (which ops are translated where).

`default_registry()` is the one dynexport's built-in ops register into (the module-level
`register` and friends act on it) and the one conversions use when given no registry. A
scoped registry (`OpRegistry(parent=default_registry())` or `default_registry().copy()`) adds
ops for one conversion or one test without touching the default. The decomposition is the
exception: it becomes the op's CompositeImplicitAutograd kernel in torch's dispatcher, which
is process-global (see README.md next to this file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram

from dynexport.adapters import openvino_frontend
from dynexport.adapters.torch_export import (
    CIA,
    OpOverload,
    as_overload,
    has_kernel_for,
    overload_name,
)

__all__ = [
    "CustomOp",
    "OpRegistry",
    "default_registry",
    "onnx_translation_table",
    "openvino_decoder_input",
    "openvino_extensions",
    "register",
    "registered_ops",
]


@dataclass(frozen=True)
class CustomOp:
    """One registered op and its translations.

    `onnx` is an onnxscript function (a plain Python function calling `opsetNN` ops, traced
    by torch.onnx) whose parameters are named like the op's schema arguments. `openvino`
    takes an `openvino.frontend.NodeContext` and returns the list of output `Output`s.
    """

    op: OpOverload
    onnx: Callable[..., Any] | None = None
    openvino: Callable[[Any], list] | None = None

    @property
    def name(self) -> str:
        """"namespace.name.overload", the spelling of coverage reports and OpenVINO."""
        return overload_name(self.op)

    @property
    def has_onnx(self) -> bool:
        return self.onnx is not None

    @property
    def has_openvino(self) -> bool:
        return self.openvino is not None

    def lowering(self, backend: str) -> str:
        """How `backend` gets this op, in words: the first sentence of its translation's
        docstring, else its decomposition, else nothing."""
        translation = getattr(self, backend)
        if translation is not None:
            text = " ".join((translation.__doc__ or "").split())
            first = re.split(r"(?<=[^.])\. |\.$", text, maxsplit=1)[0]
            return first[:100] or f"dynexport's {backend} translation"
        if self.has_decomposition:
            return "decomposed into portable aten ops"
        return "no translation"

    @property
    def has_decomposition(self) -> bool:
        """True if the op decomposes into aten ops (a CompositeImplicitAutograd kernel), which
        plain `openvino.convert_model(ep)` and `torch.onnx.export(ep)` apply by themselves."""
        return has_kernel_for(self.op, CIA)


# torch.library registrations are process-global and live as long as their Library object;
# the decomposition given for each op, so that registering the same op again in another
# registry with the same decomposition is allowed and a different one is refused.
_LIBRARIES: dict[str, torch.library.Library] = {}
_DECOMPOSITIONS: dict[OpOverload, Callable[..., Any]] = {}


def _register_decomposition(overload: OpOverload, decomposition: Callable[..., Any]) -> None:
    known = _DECOMPOSITIONS.get(overload)
    if known is decomposition:
        return
    if known is not None:
        raise ValueError(f"decomposition: {overload.name()} already has another decomposition "
                         "(a CompositeImplicitAutograd kernel is process-global)")
    if has_kernel_for(overload, CIA):
        raise ValueError(f"decomposition: {overload.name()} already has a "
                         "CompositeImplicitAutograd kernel")
    namespace = overload.namespace
    library = _LIBRARIES.setdefault(namespace, torch.library.Library(namespace, "FRAGMENT"))
    library.impl(overload.name(), decomposition, CIA)
    _DECOMPOSITIONS[overload] = decomposition


class OpRegistry:
    """Custom ops and their backend translations, for one set of conversions.

    `OpRegistry(parent=p)` sees every op of `p`, including ops registered into `p` later, and
    adds its own; `copy()` is a snapshot that later registrations into either side do not
    reach.
    """

    def __init__(self, parent: OpRegistry | None = None) -> None:
        if parent is not None and not isinstance(parent, OpRegistry):
            raise TypeError(f"parent: expected an OpRegistry or None, got {parent!r}")
        self.parent = parent
        self._records: dict[OpOverload, CustomOp] = {}

    def __repr__(self) -> str:
        return f"<OpRegistry of {len(self.ops())} ops{' (scoped)' if self.parent else ''}>"

    def __contains__(self, op: object) -> bool:
        return self.get(op) is not None

    def get(self, op: object) -> CustomOp | None:
        """The record of `op` (any spelling `register` accepts), here or in a parent."""
        overload = as_overload(op)
        registry: OpRegistry | None = self
        while registry is not None:
            if overload in registry._records:
                return registry._records[overload]
            registry = registry.parent
        return None

    def register(self, op: object, *, decomposition: Callable[..., Any] | None = None,
                 onnx: Callable[..., Any] | None = None,
                 openvino: Callable[[Any], list] | None = None) -> CustomOp:
        """Register `op`'s translations here; call once per op and registry.

        `decomposition` (same signature as the op, written with portable aten ops) becomes
        the op's CompositeImplicitAutograd kernel: eager calls keep using the op's own
        kernel and autograd, torch.export keeps the op in the graph, and consumers' default
        decomposition passes (plain `openvino.convert_model(ep)`, `torch.onnx.export(ep)`)
        replace it by the decomposition. That kernel is process-global, whichever registry
        it is given to. `onnx` and `openvino` are what dynexport's own conversions with this
        registry use instead.
        """
        overload = as_overload(op)
        for name, value in (("decomposition", decomposition), ("onnx", onnx),
                            ("openvino", openvino)):
            if value is not None and not callable(value):
                raise TypeError(f"{name}: expected a callable or None, got {value!r}")
        if overload in self:
            raise ValueError(f"op: {overload.name()} is already registered with dynexport")
        if decomposition is not None:
            _register_decomposition(overload, decomposition)
        record = CustomOp(op=overload, onnx=onnx, openvino=openvino)
        self._records[overload] = record
        return record

    def ops(self) -> list[CustomOp]:
        """Every registered op, the parent's first, in registration order."""
        inherited = self.parent.ops() if self.parent is not None else []
        return inherited + list(self._records.values())

    def copy(self) -> OpRegistry:
        """A registry with the same ops (flattened, no parent), independent from now on."""
        clone = OpRegistry()
        clone._records = {rec.op: rec for rec in self.ops()}
        return clone

    def onnx_translation_table(self) -> dict[OpOverload, Callable[..., Any]]:
        """`custom_translation_table` for `torch.onnx.export(ep, dynamo=True, ...)`.

        torch.onnx leaves an op with a translation out of its decomposition table, so the
        op reaches the translation intact instead of being decomposed first. Besides the
        registry's ops: scatter_reduce, whose torchlib translation computes "mean" wrongly
        (backends/onnx_index_ops)."""
        from dynexport.backends import onnx_index_ops

        return {rec.op: rec.onnx for rec in self.ops() if rec.onnx is not None} \
            | onnx_index_ops.table()

    def openvino_extensions(self) -> list:
        """`ConversionExtension`s for `openvino.convert_model(..., extension=...)`; they only
        see their op if the input comes from `openvino_decoder_input`. Besides the registry's
        ops: arithmetic on sizes (backends/openvino_size_ops) and scatter_reduce
        (backends/openvino_index_ops), which OpenVINO's fx frontend lacks."""
        from dynexport.backends.openvino_index_ops import index_op_extensions
        from dynexport.backends.openvino_size_ops import size_op_extensions

        return [openvino_frontend.conversion_extension(rec.name, rec.openvino)
                for rec in self.ops() if rec.openvino is not None] \
            + size_op_extensions() + index_op_extensions()

    def openvino_decoder_input(self, program: ExportedProgram) -> Any:
        """What to pass to `openvino.convert_model` (with `extension=openvino_extensions()`)
        instead of `program`: a `TorchFXPythonDecoder`.

        `convert_model(ep)` decomposes the program with torch's default table minus
        OpenVINO's `ops_to_not_decompose()`, and that table decomposes every
        CompositeImplicitAutograd op, ours included, before any ConversionExtension is
        consulted. This builds the same decoder from the same table, except that registered
        ops with an OpenVINO conversion are kept (torch >= 2.6).
        """
        return openvino_frontend.decoder_input(
            program, keep=[rec.op for rec in self.ops() if rec.openvino is not None])


_DEFAULT = OpRegistry()


def default_registry() -> OpRegistry:
    """The registry dynexport's built-in ops register into and conversions use by default."""
    return _DEFAULT


def resolve(registry: OpRegistry | None) -> OpRegistry:
    """`registry`, or the default one for None."""
    if registry is None:
        return _DEFAULT
    if not isinstance(registry, OpRegistry):
        raise TypeError(f"registry: expected an OpRegistry or None, got {registry!r}")
    return registry


# --- the default registry, module-level (what op modules call at import) ----------------------

def register(op: object, *, decomposition: Callable[..., Any] | None = None,
             onnx: Callable[..., Any] | None = None,
             openvino: Callable[[Any], list] | None = None) -> CustomOp:
    """`default_registry().register(...)`: call once from the op's own module."""
    return _DEFAULT.register(op, decomposition=decomposition, onnx=onnx, openvino=openvino)


def registered_ops() -> list[CustomOp]:
    """Every op of the default registry, in registration order."""
    return _DEFAULT.ops()


def onnx_translation_table() -> dict[OpOverload, Callable[..., Any]]:
    """The default registry's `onnx_translation_table()`."""
    return _DEFAULT.onnx_translation_table()


def openvino_extensions() -> list:
    """The default registry's `openvino_extensions()`."""
    return _DEFAULT.openvino_extensions()


def openvino_decoder_input(program: ExportedProgram) -> Any:
    """The default registry's `openvino_decoder_input(program)`."""
    return _DEFAULT.openvino_decoder_input(program)
