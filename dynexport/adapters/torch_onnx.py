"""torch.onnx dynamo-exporter internals (`torch.onnx._internal.exporter`) dynexport relies on
to ask the exporter what it can lower without exporting.

Each name here is smoke-tested in tests/test_adapters.py (`test_torch_onnx_*`). torch.onnx is
imported inside the functions: it is slow to import and only the coverage preflight needs it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.export import ExportedProgram

__all__ = ["has_translation", "is_onnx_op", "onnx_registry", "prepare_for_export"]


def onnx_registry(custom: Iterable[tuple[object, Callable[..., Any]]] = ()) -> Any:
    """torchlib's `ONNXRegistry` plus `custom` (op, onnxscript function) translations, as
    `torch.onnx.export(..., custom_translation_table=dict(custom))` builds it."""
    return _onnx_registry(tuple(custom))


@functools.lru_cache(maxsize=4)
def _onnx_registry(custom: tuple[tuple[object, Callable[..., Any]], ...]) -> Any:
    # Building torchlib's registry is slow (docs/decompositions.md); the custom translations are
    # part of the key.
    from torch.onnx._internal.exporter import _registration

    registry = _registration.ONNXRegistry.from_torchlib()
    for target, function in custom:
        registry.register_op(target, function, is_complex=False)
    return registry


def prepare_for_export(program: ExportedProgram, registry: Any) -> ExportedProgram:
    """The program torch.onnx really translates: its decomposition table (every op torchlib
    and `registry` lack), type promotion and assertion removal applied to `program`."""
    from torch.onnx._internal.exporter import _core

    return _core._prepare_exported_program_for_export(program, registry=registry)


def is_onnx_op(target: object) -> bool:
    """True for the `onnx::` ops torch.onnx emits as ONNX nodes directly (no translation)."""
    from torch.onnx._internal.exporter import _core

    return _core._is_onnx_op(target)


def has_translation(node: torch.fx.Node, registry: Any) -> bool:
    """True if torch.onnx's dispatcher finds an ONNX function in `registry` for `node`."""
    from torch.onnx._internal.exporter import _dispatching

    function, _message = _dispatching.dispatch(node, registry)
    return function is not None
