"""ONNX translations of index and search ops torch.onnx lowers wrongly or not at all:
`scatter_reduce` (`aten.scatter_reduce.two`, in place of torchlib's), `bucketize` and a stable
`sort` (their docstrings say what torch.onnx lacks).

scatter_reduce: torchlib's `aten_scatter_reduce` (onnxscript 0.7.2) lowers "mean" to
ScatterElements with reduction "none", a plain write, so a voxelizer's per-voxel mean comes out
wrong without an error, and it passes all of `src` where torch reads only its leading
`index.shape` block (onnxruntime then refuses to run: "Indices vs updates dimensions differs").
This translation slices `src` to `index`'s shape and builds every reduction from
ScatterElements, which onnxruntime computes the same at any thread count
(backends/onnx_races.py):

* include_self=False first writes a neutral start at the scattered positions: 0 for sum and
  mean, 1 for prod, and for amax/amin one of the position's own updates (a plain write of any
  of them; the reduction over all of them then gives the same answer whichever was written).
* mean divides the sum by the count of updates (plus one with include_self); integers floor,
  as torch does (-4 / 3 gives -2). A position no update reaches keeps `self`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dynexport.adapters.torch_export import OpOverload

_REDUCTIONS = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min", "mean": "add"}


def scatter_reduce(self, dim: int, index, src, reduce: str, include_self: bool = True):
    from onnx import TensorProto, helper
    from onnxscript import opset18 as op

    zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
    starts = op.ConstantOfShape(op.Shape(op.Shape(index)), value=zero)
    src = op.Slice(src, starts, op.Shape(index))
    reduction = _REDUCTIONS[reduce]
    if reduce in ("amax", "amin"):
        start = self if include_self else op.ScatterElements(self, index, src, axis=dim)
        return op.ScatterElements(start, index, src, axis=dim, reduction=reduction)
    neutral = op.CastLike(op.Constant(value_int=1 if reduce == "prod" else 0), self)
    start = self if include_self else op.ScatterElements(
        self, index, op.Expand(neutral, op.Shape(src)), axis=dim)
    total = op.ScatterElements(start, index, src, axis=dim, reduction=reduction)
    if reduce != "mean":
        return total
    one = op.CastLike(op.Constant(value_int=1), self)
    base = op.Expand(op.CastLike(op.Constant(value_int=int(include_self)), self),
                     op.Shape(self))
    count = op.ScatterElements(base, index, op.Expand(one, op.Shape(src)), axis=dim,
                               reduction="add")
    divisor = op.Max(count, one)
    if _is_integer(self):
        mean = op.Div(op.Sub(total, op.Mod(total, divisor)), divisor)
    else:
        mean = op.Div(total, divisor)
    return op.Where(op.Equal(count, op.CastLike(op.Constant(value_int=0), self)), self, mean)


def bucketize(self, boundaries, out_int32: bool = False, right: bool = False):
    """The number of boundaries below each value (at or below, `right`): ONNX has no
    bucketize, and torch.onnx 2.13 fails on it. Compares every value with every boundary
    (memory values x boundaries; boundaries are bins, few)."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    last = op.Constant(value_ints=[-1])
    values = op.Unsqueeze(self, last)
    below = op.LessOrEqual(boundaries, values) if right else op.Less(boundaries, values)
    count = op.ReduceSum(op.Cast(below, to=TensorProto.INT64), last, keepdims=0)
    return op.Cast(count, to=TensorProto.INT32) if out_int32 else count


def sort_stable(self, stable: bool | None = None, dim: int = -1, descending: bool = False):
    """`torch.sort(..., stable=True)`, which torch.onnx 2.13 lacks (no function for
    `aten.sort.stable`): TopK over the whole axis, which ONNX specifies to put equal values in
    index order, the stable order (the radix sort of decompositions/unique.py relies on it)."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    length = op.Gather(op.Shape(self), op.Constant(value_ints=[dim]))
    values, indices = op.TopK(self, length, axis=dim, largest=int(descending), sorted=1)
    return values, op.Cast(indices, to=TensorProto.INT64)


def _is_integer(value: Any) -> bool:
    """Whether the traced ONNX value holds integers (its dtype is known when torch.onnx
    traces the translation)."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and getattr(dtype, "is_integer", lambda: False)()


# what each translation lowers to (the report's `handled`)
TRANSLATED = {torch.ops.aten.scatter_reduce.two: "ScatterElements with the reduction, sliced src",
              torch.ops.aten.bucketize.Tensor: "a count of the boundaries below each value",
              torch.ops.aten.sort.stable: "TopK, stable by ONNX's definition"}


def table() -> dict[OpOverload, Callable]:
    """This module's entries of torch.onnx's custom translation table."""
    return {torch.ops.aten.scatter_reduce.two: scatter_reduce,
            torch.ops.aten.bucketize.Tensor: bucketize,
            torch.ops.aten.sort.stable: sort_stable}
