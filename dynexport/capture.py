"""Capture stage: torch.export with strict → non-strict → draft fallbacks.

Each strategy is tried in order; the first that produces a program wins, and every attempt is
kept (with its error) so that later stages can explain why the stricter ones failed."""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.export import ExportedProgram

from dynexport import progress
from dynexport.adapters.torch_export import backed_size_oblivious, draft_report
from dynexport.errors import one_line
from dynexport.inputs import Inputs
from dynexport.names import STRATEGIES, Strategy
from dynexport.patches import PatchCall, applied, calls_in_graph, registered_patches
from dynexport.quiet import quiet_torch


@dataclass
class Attempt:
    """One try of one capture strategy."""

    strategy: Strategy
    seconds: float
    error: BaseException | None = None
    program: ExportedProgram | None = None

    @property
    def ok(self) -> bool:
        return self.program is not None


@dataclass
class Capture:
    """The captured program and the story of how it was obtained."""

    program: ExportedProgram | None
    strategy: Strategy | None
    attempts: list[Attempt] = field(default_factory=list)
    # Inputs' dimensions declared dynamic whose example size is 0 or 1, kept dynamic by
    # capturing size-obliviously (names like "x.0": input x, dimension 0).
    size_oblivious_dims: list[str] = field(default_factory=list)
    # Known-library patches the captured program went through, at the lines that called them
    patched: list[PatchCall] = field(default_factory=list)

    @property
    def draft_report(self) -> Any:
        """torch's DraftExportReport when draft export ran (its failures name user lines)."""
        return draft_report(self.program) if self.strategy == "draft" else None


class CaptureError(RuntimeError):
    """No strategy could capture the model."""

    def __init__(self, capture: Capture):
        self.capture = capture
        self.evidence = capture  # for the hazard step: why each strategy failed
        lines = [f"{a.strategy}: {one_line(a.error)}" for a in capture.attempts]
        super().__init__("torch.export could not capture the model with any strategy:\n  "
                         + "\n  ".join(lines))


def method_module(model: torch.nn.Module, method: str) -> torch.nn.Module:
    """A module whose `forward` is `model.<method>`, with that method's signature, so that
    torch.export binds arguments and `dynamic_shapes` to the method's own parameter names."""
    function = getattr(type(model), method)

    class MethodModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return function(self.model, *args, **kwargs)

    MethodModule.forward.__signature__ = inspect.signature(function)
    MethodModule.__name__ = f"{type(model).__name__}.{method}"
    return MethodModule()


def capture(model: torch.nn.Module, inputs: Inputs, dynamic_shapes: Any = None,
            method: str = "forward",
            strategies: tuple[Strategy, ...] = STRATEGIES, no_patch: tuple[str, ...] = ()
            ) -> Capture:
    """Export `model` on `inputs`, falling back strict → non-strict → draft, with the
    known-library patches (dynexport/patches) not named in `no_patch` applied.

    Raises CaptureError (holding every attempt) when all strategies fail."""
    module = model if method == "forward" else method_module(model, method)
    result = Capture(program=None, strategy=None)
    # torch specializes a dimension whose example size is 0 or 1 (it cannot tell "1" from
    # "broadcast"), so a batch-1 example pins a batch declared dynamic. torch.onnx's own capture
    # exports size-obliviously for the same reason; do so when such a dimension exists.
    oblivious = dynamic_shapes is not None and any(
        size in (0, 1) for t in inputs.tensors() for size in t.shape)
    for strategy in strategies:
        progress.step(f"{strategy.replace('_', '-')} export")
        start = time.perf_counter()
        try:
            with quiet_torch(), _size_oblivious(oblivious), applied(no_patch) as calls:
                program = _EXPORTERS[strategy](module, inputs.args, inputs.kwargs,
                                               dynamic_shapes)
        except Exception as exc:  # every failure is kept and explained, none is fatal here
            result.attempts.append(Attempt(strategy, time.perf_counter() - start, error=exc))
            continue
        result.attempts.append(Attempt(strategy, time.perf_counter() - start, program=program))
        result.program, result.strategy = program, strategy
        result.patched = calls or calls_in_graph(
            [node.meta.get("stack_trace") or "" for node in program.graph.nodes],
            [patch for patch in registered_patches() if patch.name not in no_patch])
        if oblivious:
            result.size_oblivious_dims = _small_dynamic_dims(program, inputs)
        return result
    raise CaptureError(result)


def _size_oblivious(enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return backed_size_oblivious()


def _small_dynamic_dims(program: ExportedProgram, inputs: Inputs) -> list[str]:
    """Dimensions of size 0 or 1 in the example that are symbolic in the program."""
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [node for node in program.graph.nodes if node.op == "placeholder"
                    and node.name in user_inputs and isinstance(node.meta.get("val"),
                                                                torch.Tensor)]
    found = []
    for node, example in zip(placeholders, inputs.tensors(), strict=False):
        name, fake = node.name, node.meta["val"]
        found += [f"{name}.{dim}" for dim, (size, symbolic) in
                  enumerate(zip(example.shape, fake.shape, strict=False))
                  if size in (0, 1) and isinstance(symbolic, torch.SymInt)]
    return found


def _strict(module, args, kwargs, dynamic_shapes) -> ExportedProgram:
    return torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=True)


def _non_strict(module, args, kwargs, dynamic_shapes) -> ExportedProgram:
    return torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)


def _draft(module, args, kwargs, dynamic_shapes) -> ExportedProgram:
    return torch.export.draft_export(module, args, kwargs, dynamic_shapes=dynamic_shapes)


_EXPORTERS = {"strict": _strict, "non_strict": _non_strict, "draft": _draft}
