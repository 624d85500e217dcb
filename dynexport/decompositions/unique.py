"""torch.unique and unique_consecutive as a sort and runs of equal neighbours.

torch.export spells `torch.unique` as `aten._unique2` (dim=None) or `aten.unique_dim` (dim given),
and `unique_consecutive` as `aten.unique_consecutive`, each with three outputs (values, inverse,
counts) whose length depends on the data. OpenVINO 2026.4's fx frontend has no rule for any of
them, and cannot be given one: it keeps only output 0 of a Python ConversionExtension, and its
`getitem` splits only the SequenceMark that C++ translators make. Taking over `getitem` for every
model to reach Unique-10's other outputs would route every tuple-returning op through Python for
one op's sake. torch.onnx lowers `_unique2` and `unique_dim` to Unique-11 but fails on
`unique_consecutive` with a dim.

So the ops are decomposed here, before both backends, into ops both convert: a sort, a
comparison of neighbours, a cumsum (each element's run) and one `nonzero` (the runs' starts,
the one data-dependent size, from which values and counts both take their length). The inverse is
scattered back through the sort's permutation, each position written once, so no runtime races
on it. `unique_dim` sorts the slices lexicographically with one stable sort per column, last
column first (a radix sort); combining columns into one integer key instead overflows in
OpenVINO, whose CPU plugin computes int64 in int32. In onnxruntime this form is also faster than
its Unique kernel (docs/decompositions.md), and plain `openvino.convert_model(ep)` and
`torch.onnx.export(ep)` of the decomposed program work too.

`sorted=False` is computed sorted, as torch's CPU kernel returns it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dynexport.adapters.torch_export import OpOverload

# The fix a report gives where a backend fails on these ops: this module declined the call.
DECLINED = ("dynexport decomposes unique and unique_consecutive, with dim only where the "
            "slices along dim have a static size: make the other dimensions static, or "
            "flatten each slice into one integer key first")


def _starts_run(rows: torch.Tensor) -> torch.Tensor:
    """Whether each element (a row, for rows of several columns) differs from the one before
    it; the first always does."""
    changed = rows[1:] != rows[:-1]
    if changed.dim() > 1:
        changed = changed.any(dim=1)
    first = torch.ones_like(rows[:1] if rows.dim() == 1 else rows[:1, 0], dtype=torch.bool)
    return torch.cat([first, changed])


def _runs(starts_run: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each element's run (0, 1, ...), each run's first position and its length. The number
    of runs is the one data-dependent size (nonzero's)."""
    run = torch.cumsum(starts_run.to(torch.int64), 0) - 1
    starts = torch.nonzero(starts_run).reshape(-1)
    ends = torch.cat([starts[1:], starts.new_full((1,), starts_run.shape[0])])
    return run, starts, ends - starts


def _unsort(run: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """`run` (in sorted order) back at the elements' own positions: a scatter by a permutation,
    each position written once."""
    return torch.zeros_like(run).scatter(0, order, run)


def _nothing(like: torch.Tensor) -> torch.Tensor:
    """What torch returns for an output not asked for: an empty int64 tensor."""
    return like.new_empty((0,), dtype=torch.int64)


def unique2(self: torch.Tensor, sorted: bool = True, return_inverse: bool = False,
            return_counts: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`aten._unique2` (torch.unique with dim=None). Sorted whatever `sorted` says, as torch's
    CPU kernel returns it."""
    flat = self.reshape(-1)
    ordered, order = torch.sort(flat)
    run, starts, counts = _runs(_starts_run(ordered))
    inverse = _unsort(run, order).reshape(self.shape) if return_inverse else _nothing(self)
    return ordered[starts], inverse, counts if return_counts else _nothing(self)


def unique_dim(self: torch.Tensor, dim: int, sorted: bool = True, return_inverse: bool = False,
               return_counts: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`aten.unique_dim`: the distinct slices along `dim`, in lexicographic order: a stable
    sort by each column, the last column first (a radix sort), puts equal slices side by
    side."""
    rows = self.movedim(dim, 0)
    if rows.dim() > 2:
        rows = rows.flatten(1)
    if rows.dim() == 1:
        rows = rows.unsqueeze(1)
    if not isinstance(rows.shape[1], int) or rows.shape[1] == 0:
        return NotImplemented  # a symbolic column count cannot be unrolled
    order = None
    for column in reversed(range(rows.shape[1])):
        keys = rows[:, column] if order is None else rows[:, column][order]
        step = torch.sort(keys, stable=True).indices
        order = step if order is None else order[step]
    run, starts, counts = _runs(_starts_run(rows[order]))
    values = self.index_select(dim, order[starts])
    return (values, _unsort(run, order) if return_inverse else _nothing(self),
            counts if return_counts else _nothing(self))


def unique_consecutive(self: torch.Tensor, return_inverse: bool = False,
                       return_counts: bool = False, dim: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`aten.unique_consecutive`: the first of each run of equal elements (slices along `dim`)."""
    rows = self.reshape(-1) if dim is None else self.movedim(dim, 0)
    if rows.dim() > 2:
        rows = rows.flatten(1)
    run, starts, counts = _runs(_starts_run(rows))
    if dim is None:
        values, inverse = rows[starts], run.reshape(self.shape)
    else:
        values, inverse = self.index_select(dim, starts), run
    return (values, inverse if return_inverse else _nothing(self),
            counts if return_counts else _nothing(self))


def table() -> dict[OpOverload, Callable]:
    """This module's entries of the decomposition table."""
    return {torch.ops.aten._unique2.default: unique2,
            torch.ops.aten.unique_dim.default: unique_dim,
            torch.ops.aten.unique_consecutive.default: unique_consecutive}
