"""Watch an eager run of the model for every place a tensor becomes a Python value or a numpy
array, and whether that tensor came from the model's inputs (data) or only from parameters and
buffers (a true constant). Runs with real tensors, so one pass sees every such place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.weak import WeakIdKeyDictionary

from dynexport.hazards.location import current_user_frame
from dynexport.hazards.records import SourceLocation

Kind = Literal["item", "int", "float", "bool", "tolist", "numpy", "size"]

_CONVERSIONS: dict[str, Kind] = {
    "item": "item", "__int__": "int", "__index__": "int", "__float__": "float",
    "__bool__": "bool", "tolist": "tolist", "numpy": "numpy", "__array__": "numpy",
    "__len__": "size", "size": "size", "numel": "size", "__get__": "size", "dim": "size",
}
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


class _ConversionWatcher(TorchFunctionMode):
    def __init__(self, inputs: list[torch.Tensor]):
        super().__init__()
        self.from_data = WeakIdKeyDictionary()
        self.dd_size = WeakIdKeyDictionary()
        for tensor in inputs:
            self.from_data[tensor] = True
        self.seen: list[Conversion] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        kind = _CONVERSIONS.get(name)
        if kind is not None and tensors:
            self._record(kind, tensors[0])
        result = func(*args, **kwargs)
        outputs = [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
        if any(t in self.from_data for t in tensors):
            for out in outputs:
                self.from_data[out] = True
        if self._sizes_depend_on_data(name, tensors, args):
            for out in outputs:
                self.dd_size[out] = True
        return result

    def _sizes_depend_on_data(self, name: str, tensors: list, args: tuple) -> bool:
        if any(t in self.dd_size for t in tensors):
            return True
        if name in _DATA_DEPENDENT_SIZE:
            return True
        if name == "where" and len(args) == 1:
            return True
        if name == "__getitem__" and len(args) > 1:
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                       for i in pytree.tree_leaves(args[1]))
        return False

    def _record(self, kind: Kind, tensor: torch.Tensor) -> None:
        dd_size = tensor in self.dd_size
        if kind == "size" and not dd_size:
            return  # a static size is no hazard
        location = current_user_frame()
        if location is not None:
            self.seen.append(Conversion(kind, location, tensor in self.from_data, dd_size))


def watch_conversions(call: Callable[[], Any], inputs: list[torch.Tensor]) -> list[Conversion]:
    """Run `call()` eagerly and return every tensor → Python conversion in user code, once per
    (line, kind), in the order they happened."""
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
    return list(unique.values())
