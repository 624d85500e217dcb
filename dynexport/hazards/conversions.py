"""Watch an eager run of the model for every place a tensor becomes a Python value or a numpy
array, and whether that tensor came from the model's inputs (data) or only from parameters and
buffers (a true constant). Runs with real tensors, so one pass sees every such place."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.weak import WeakIdKeyDictionary

from dynexport.adapters.torch_export import HigherOrderOperator
from dynexport.hazards.location import current_user_frame
from dynexport.hazards.records import SourceLocation

Kind = Literal["item", "int", "float", "bool", "tolist", "numpy", "size"]

_CONVERSIONS: dict[str, Kind] = {
    "item": "item", "__int__": "int", "__index__": "int", "__float__": "float",
    "__bool__": "bool", "tolist": "tolist", "numpy": "numpy", "__array__": "numpy",
    "__len__": "size", "size": "size", "numel": "size", "__get__": "size",
    # Python bools computed from data: `if torch.equal(a, b):` stops every capture strategy.
    "equal": "bool", "allclose": "bool", "is_nonzero": "bool",
}
# Attribute reads (`__get__` of a tensor property) that are sizes; `t.is_quantized`, `t.dtype`
# or `t.ndim` do not depend on how many elements a mask selected.
_SIZE_PROPERTIES = {"shape"}
# Ops whose output size depends on the values of their input.
_DATA_DEPENDENT_SIZE = {"nonzero", "masked_select", "unique", "unique_consecutive", "argwhere",
                        "repeat_interleave"}


@dataclass(frozen=True)
class Conversion:
    """A tensor turned into a Python value (or numpy array) at a line of user code."""

    kind: Kind
    location: SourceLocation
    from_data: bool  # the tensor depends on the model's inputs
    data_dependent_size: bool  # its size depends on input values (after a mask, nonzero, ...)
    is_mask: bool = False  # a bool tensor: the length of a mask is not the number selected
    # inside a function the user marked torch._dynamo.assume_constant_result
    assumed_constant: bool = False


@dataclass(frozen=True)
class Unwatched:
    """A part of the model the watch ran without looking into it: a higher-order op
    (torch.cond, map) whose branches torch compiles even in eager, at the user's line."""

    op: str
    location: SourceLocation | None


@dataclass
class Watched:
    """What an eager run under the watch saw, and what it could not look into."""

    conversions: list[Conversion]
    unwatched: list[Unwatched]


class _ConversionWatcher(TorchFunctionMode):
    def __init__(self, inputs: list[torch.Tensor]):
        super().__init__()
        self.from_data = WeakIdKeyDictionary()
        # tensor → the lengths among its dimensions that depend on input values
        self.dd_lengths = WeakIdKeyDictionary()
        for tensor in inputs:
            self.from_data[tensor] = True
        self.seen: list[Conversion] = []
        self.unwatched: list[Unwatched] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.compiler.is_compiling():
            # torch.cond / map compile their branches even in eager, and dynamo traces this
            # mode with them; it cannot trace the watch's bookkeeping: pass straight through.
            return func(*args, **kwargs)
        if isinstance(func, HigherOrderOperator):
            self.unwatched.append(Unwatched(getattr(func, "__name__", str(func)),
                                            current_user_frame()))
            return func(*args, **kwargs)  # its branches run unwatched
        name = getattr(func, "__name__", "")
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        kind = _CONVERSIONS.get(name)
        if name == "__get__" and getattr(getattr(func, "__self__", None), "__name__",
                                         None) not in _SIZE_PROPERTIES:
            kind = None
        if kind is not None and tensors:
            self._record(kind, tensors[0], name)
        result = func(*args, **kwargs)
        outputs = [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
        if any(t in self.from_data for t in tensors):
            for out in outputs:
                self.from_data[out] = True
        self._track_lengths(name, tensors, args, outputs)
        return result

    def _track_lengths(self, name: str, tensors: list, args: tuple, outputs: list) -> None:
        """A data-dependent op's first output dimension depends on the data; other ops pass on
        the dependent lengths their outputs still have (a sum or a fixed-size scatter does not)."""
        creates = (name in _DATA_DEPENDENT_SIZE or (name == "where" and len(args) == 1)
                   or (name == "__getitem__" and len(args) > 1 and any(
                       isinstance(i, torch.Tensor) and i.dtype == torch.bool
                       for i in pytree.tree_leaves(args[1]))))
        inherited = set().union(*(self.dd_lengths.get(t, ()) for t in tensors))
        for out in outputs:
            lengths = {d for d in out.shape if d in inherited}
            if creates and out.dim() > 0:
                lengths.add(out.shape[0])
            if lengths:
                self.dd_lengths[out] = frozenset(lengths)

    def _record(self, kind: Kind, tensor: torch.Tensor, name: str) -> None:
        dd_size = tensor in self.dd_lengths
        # The length of a 1-D mask (or len()/numel() of any) is the number of candidates; the
        # shape of a 2-D attention mask is a size like any other.
        is_mask = tensor.dtype == torch.bool and (tensor.dim() <= 1
                                                   or name in ("__len__", "numel"))
        if kind == "size" and not (dd_size or is_mask):
            return  # a static size is no hazard
        location = current_user_frame()
        if location is not None:
            self.seen.append(Conversion(kind, location, tensor in self.from_data, dd_size,
                                        is_mask, _in_assumed_constant(sys._getframe(1))))


def _in_assumed_constant(frame: FrameType | None) -> bool:
    """A frame of the stack runs a function marked `torch._dynamo.assume_constant_result`
    (looked up as a method of `self` or a global of its module)."""
    while frame is not None:
        code = frame.f_code
        owner = frame.f_locals.get("self")
        function = (getattr(type(owner), code.co_name, None) if owner is not None
                    else frame.f_globals.get(code.co_name))
        if getattr(function, "_dynamo_marked_constant", False):
            return True
        frame = frame.f_back
    return False


def watch_conversions(call: Callable[[], Any], inputs: list[torch.Tensor]) -> Watched:
    """Run `call()` eagerly; every tensor → Python conversion in user code, once per (line,
    kind), in the order they happened, and the higher-order ops whose branches ran unwatched."""
    watcher = _ConversionWatcher(inputs)
    with torch.no_grad(), watcher:
        call()
    unique: dict[tuple, Conversion] = {}
    for conversion in watcher.seen:
        key = (conversion.location, conversion.kind)
        previous = unique.get(key)
        if previous is None:
            unique[key] = conversion
        elif conversion.from_data and not previous.from_data:
            unique[key] = conversion  # data at any call makes the line data-dependent
    return Watched(list(unique.values()), list(dict.fromkeys(watcher.unwatched)))
