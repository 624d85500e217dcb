"""Eager stage: run the user's model on the example and the probe, once each, watched.

Its outputs are the reference every runtime is verified against, and what the watch saw (every
tensor turned into a Python value, at the user's line) is evidence for the hazard step. Running
eager once per input here is what lets verification skip its own eager runs (a FlashOcc M0
frame is seconds of CPU).

It runs in this process, with torch's threads: a forked child could use one thread only (GNU
OpenMP hangs in a child once the parent has used it), and eager on one thread rounds
differently enough to flip a detector's NMS near-ties (examples/zoo/detector_nms.py: boxes 17
pixels apart), which verification against multi-threaded runtimes then reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from dynexport import progress
from dynexport.errors import summary
from dynexport.hazards.conversions import Conversion, Unwatched, watch_conversions
from dynexport.hazards.location import location_from_exception
from dynexport.inputs import Inputs, eager_call, flatten_outputs
from dynexport.names import InputKind
from dynexport.stage import StageFailed


@dataclass
class EagerRun:
    """Eager PyTorch's outputs per input (flattened and named), the inputs themselves (every
    later stage runs these), and what the watch saw."""

    inputs: dict[InputKind, Inputs] = field(default_factory=dict)
    outputs: dict[InputKind, list[tuple[str, Any]]] = field(default_factory=dict)
    conversions: list[Conversion] = field(default_factory=list)
    unwatched: list[Unwatched] = field(default_factory=list)  # parts run without the watch

    def output_names(self) -> list[str]:
        return [name for name, _ in next(iter(self.outputs.values()), [])]


def run_eager(model: torch.nn.Module, inputs: dict[InputKind, Inputs],
              method: str = "forward") -> EagerRun:
    """Call the model on a copy of each input under the conversion watch: a model that changes
    an input in place (`x.mul_(2)`) must leave the inputs every runtime is fed as they were.
    Raises StageFailed (with what was seen so far as evidence) when the model itself raises."""
    call = eager_call(model, method)
    result = EagerRun(inputs=dict(inputs))
    for kind, values in inputs.items():
        progress.step(f"the {kind} input")
        produced: list[Any] = []
        copy = copied(values)
        try:
            watched = watch_conversions(
                lambda v=copy, out=produced: out.append(call(v)), copy.tensors())
            result.conversions += watched.conversions
            result.unwatched += [u for u in watched.unwatched if u not in result.unwatched]
        except Exception as exc:
            where = location_from_exception(exc)
            at = f" at {where.file}:{where.line} ({where.code})" if where else ""
            raise StageFailed(f"the model raised on the {kind} input{at}: {summary(exc)}",
                              evidence=result) from exc
        result.outputs[kind] = flatten_outputs(produced[0])
    return result


def copied(inputs: Inputs) -> Inputs:
    """`inputs` with every tensor cloned, the rest shared."""
    args, kwargs = pytree.tree_map(
        lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) else leaf,
        (inputs.args, inputs.kwargs))
    return Inputs(args=tuple(args), kwargs=dict(kwargs))
