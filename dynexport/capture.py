"""Capture stage: torch.export with strict → non-strict → draft fallbacks.

Each strategy is tried in order; the first that produces a program wins, and every attempt is
kept (with its error) so that later stages can explain why the stricter ones failed."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.export import ExportedProgram

from dynexport.inputs import Inputs
from dynexport.quiet import quiet_torch

Strategy = Literal["strict", "non_strict", "draft"]
STRATEGIES: tuple[Strategy, ...] = ("strict", "non_strict", "draft")


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

    @property
    def draft_report(self) -> Any:
        """torch's DraftExportReport when draft export ran (its failures name user lines)."""
        return getattr(self.program, "_report", None) if self.strategy == "draft" else None


class CaptureError(RuntimeError):
    """No strategy could capture the model."""

    def __init__(self, capture: Capture):
        self.capture = capture
        lines = [f"{a.strategy}: {type(a.error).__name__}: {_first_line(a.error)}"
                 for a in capture.attempts]
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
            strategies: tuple[Strategy, ...] = STRATEGIES) -> Capture:
    """Export `model` on `inputs`, falling back strict → non-strict → draft.

    Raises CaptureError (holding every attempt) when all strategies fail."""
    module = model if method == "forward" else method_module(model, method)
    result = Capture(program=None, strategy=None)
    for strategy in strategies:
        start = time.perf_counter()
        try:
            with quiet_torch():
                program = _EXPORTERS[strategy](module, inputs.args, inputs.kwargs,
                                               dynamic_shapes)
        except Exception as exc:  # every failure is kept and explained, none is fatal here
            result.attempts.append(Attempt(strategy, time.perf_counter() - start, error=exc))
            continue
        result.attempts.append(Attempt(strategy, time.perf_counter() - start, program=program))
        result.program, result.strategy = program, strategy
        return result
    raise CaptureError(result)


def _strict(module, args, kwargs, dynamic_shapes) -> ExportedProgram:
    return torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=True)


def _non_strict(module, args, kwargs, dynamic_shapes) -> ExportedProgram:
    return torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)


def _draft(module, args, kwargs, dynamic_shapes) -> ExportedProgram:
    return torch.export.draft_export(module, args, kwargs, dynamic_shapes=dynamic_shapes)


_EXPORTERS = {"strict": _strict, "non_strict": _non_strict, "draft": _draft}

def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
