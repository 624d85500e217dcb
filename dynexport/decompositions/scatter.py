"""index_add and index_put(accumulate=True) as scatter_add: exact in every runtime; index_reduce
as scatter_reduce; the index writes OpenVINO cannot convert (`canvas[:, ys, xs] = v`) as a
write with one flat index.

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

# The fix a report gives where a backend fails on these ops: this module declined the call.
DECLINED = ("dynexport rewrites index_add, index_reduce and index_put only with integer index "
            "tensors (a boolean mask or a 0-d tensor stays as written): index with the integer "
            "positions (`mask.nonzero(as_tuple=True)`), or write through one flat integer "
            "index into a flattened view (`canvas.view(C, -1)[:, ys * W + xs] = v`)")


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
    """`self.index_put(indices, values, accumulate)` with integer index tensors, as one flat
    index into `self` viewed as (cells, *rest): the indexed dims moved to the front and their
    broadcast indices combined into one.

    With accumulate=True that index is index_add-ed (scatter_add), wherever the index tensors
    stand. A write (accumulate=False) is rewritten only where OpenVINO's frontend cannot
    convert it, two or more index tensors with a slice before or between them
    (`canvas[:, ys, xs] = v`: its AtenIndexPutReplacer fails, OpenVINO 2026.4); it stays an
    index_put, now with one leading index, which both backends convert. Declines (the op
    stays) for boolean masks and for the writes both backends convert as captured."""
    if self.dim() == 0 or not 0 < len(indices) <= self.dim():
        return NotImplemented
    if any(index is not None and index.dtype in (torch.bool, torch.uint8) for index in indices):
        return NotImplemented
    indexed = [dim for dim, index in enumerate(indices) if index is not None]
    if not indexed:
        return NotImplemented
    if not accumulate and (len(indexed) < 2 or indexed == list(range(len(indexed)))):
        return NotImplemented
    front = list(range(len(indexed)))
    moved = self.movedim(indexed, front)  # the indexed dims first, the rest in order
    # Sizes spelled out: reshape(-1, ...) is ambiguous when the rest holds a 0.
    cells = moved.reshape(math.prod(moved.shape[:len(indexed)]), *moved.shape[len(indexed):])
    flat, source = _flat_index_and_values(self, indices, indexed, values)
    if accumulate:
        written = index_add(cells, 0, flat, source)
    else:
        written = cells.index_put((flat,), source.to(self.dtype))
    return written.reshape(moved.shape).movedim(front, indexed)


def _flat_index_and_values(self: torch.Tensor, indices: Sequence[torch.Tensor | None],
                           indexed: list[int], values: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The broadcast index tensors as one flat index over the indexed dims, and `values` as
    (flat index count, *sizes of the other dims).

    torch puts the broadcast index dims where the indexed dims stand when these are
    adjacent, and in front otherwise; `values` broadcasts to that layout, and is moved so
    that the index dims lead, as in `self` with its indexed dims moved first."""
    tensors = torch.broadcast_tensors(*(indices[dim] for dim in indexed))
    flat = None
    for index, dim in zip(tensors, indexed, strict=True):
        size = self.shape[dim]
        index = index.to(torch.int64)
        index = torch.where(index < 0, index + size, index)  # negative counts from the end
        flat = index if flat is None else flat * size + index
    rest = [size for dim, size in enumerate(self.shape) if dim not in indexed]
    adjacent = indexed == list(range(indexed[0], indexed[-1] + 1))
    lead = indexed[0] if adjacent else 0  # rest dims before the index dims in the result
    broadcast = list(flat.shape)
    source = values.expand(rest[:lead] + broadcast + rest[lead:]).movedim(
        list(range(lead, lead + len(broadcast))), list(range(len(broadcast))))
    return flat.reshape(-1), source.reshape(flat.numel(), *rest)


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
