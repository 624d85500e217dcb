"""index_add and index_put(accumulate=True) as scatter_add: exact in every runtime; index_reduce
as scatter_reduce.

torch.onnx lowers `index_add` and `index_put(..., accumulate=True)` to ScatterND with reduction
"add", which onnxruntime's CPU kernel computes wrongly, and differently from run to run, when
indices repeat and the session has more than one thread (onnxruntime #18048, #23396).
scatter_add becomes ScatterElements(add), whose kernel gives no two threads one element and
sums each element in index order: exact and deterministic with any thread count
(backends/onnx_races.py cites onnxruntime's source for both). OpenVINO's PyTorch frontend
rejects `aten.index_add.default` outright ("Got less inputs 4 than expected 5", OpenVINO
2026.4) and converts scatter_add.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from dynexport.adapters.torch_export import OpOverload


def index_add(self: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor,
              alpha: float = 1) -> torch.Tensor:
    if self.dim() == 0:
        return NotImplemented  # keeps the op; the coverage report names it
    dim = dim % self.dim()
    if alpha != 1:
        source = source * alpha
    return self.scatter_add(dim, _along(index, dim, source), source.to(self.dtype))


def _along(index: torch.Tensor, dim: int, source: torch.Tensor) -> torch.Tensor:
    """The scatter index of an index_* op: scatter wants it in source's shape, `index` along
    `dim` and broadcast elsewhere."""
    shape = [1] * source.dim()
    shape[dim] = -1
    return index.reshape(shape).expand_as(source)


def index_reduce(self: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor,
                 reduce: str, include_self: bool = True) -> torch.Tensor:
    """`index_reduce` ("prod", "mean", "amax", "amin") is scatter_reduce with the index
    broadcast over source: neither backend has a rule for `aten.index_reduce`, both convert
    scatter_reduce (backends/*_index_ops.py)."""
    if self.dim() == 0:
        return NotImplemented
    dim = dim % self.dim()
    return self.scatter_reduce(dim, _along(index, dim, source), source, reduce,
                               include_self=include_self)


def index_put(self: torch.Tensor, indices: Sequence[torch.Tensor | None], values: torch.Tensor,
              accumulate: bool = False) -> torch.Tensor:
    """`self.index_put(indices, values, accumulate=True)` for integer index tensors over the
    leading dims: their broadcast indices become one flat index into those dims, and the
    values are index_add-ed along dim 0 of `self` viewed as (cells, *rest).

    Declines (the op stays) without accumulate (a write, not a sum: torch.onnx's ScatterND
    without reduction) and for boolean masks or skipped dims (None)."""
    if not accumulate or self.dim() == 0 or not 0 < len(indices) <= self.dim():
        return NotImplemented
    if any(index is None or index.dtype in (torch.bool, torch.uint8) for index in indices):
        return NotImplemented
    indexed, rest = self.shape[:len(indices)], self.shape[len(indices):]
    flat = None
    for index, size in zip(torch.broadcast_tensors(*indices), indexed, strict=True):
        index = index.to(torch.int64)
        index = torch.where(index < 0, index + size, index)  # negative counts from the end
        flat = index if flat is None else flat * size + index
    # Sizes spelled out: reshape(-1, ...) is ambiguous when `rest` holds a 0.
    cells = self.reshape(math.prod(indexed), *rest)
    source = values.expand(*flat.shape, *rest).reshape(flat.numel(), *rest)
    return index_add(cells, 0, flat.reshape(-1), source).reshape(self.shape)


def index_put_(self: torch.Tensor, indices: Sequence[torch.Tensor | None],
               values: torch.Tensor, accumulate: bool = False) -> torch.Tensor:
    """In place, as captured from `bev.index_put_(...)`: the sum is copied back into `self`,
    so later readers of `self` still see the mutation."""
    result = index_put(self, indices, values, accumulate)
    return result if result is NotImplemented else self.copy_(result)


def table() -> dict[OpOverload, Callable]:
    """This module's entries of the decomposition table."""
    return {torch.ops.aten.index_add.default: index_add,
            torch.ops.aten.index_put.default: index_put,
            torch.ops.aten.index_put_.default: index_put_,
            torch.ops.aten.index_reduce.default: index_reduce}
