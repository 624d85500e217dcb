"""OpenVINO conversions of Python's comparison operators on sizes.

A program with dynamic shapes compares sizes in Python (`x.shape[0] > 2` as a `torch.cond`
predicate becomes an fx node `operator.gt(sym_size, 2)`). OpenVINO's PyTorch frontend converts
`operator.add`, `mul`, `floordiv` and `getitem` of sizes but has no rule for the comparisons
("No conversion rule found for operations: <built-in function gt>", torch's export example
`cond_operands`). Sizes reach the frontend as i64 scalars, so each comparison is one opset
node. The frontend names a Python builtin target by `str(target)`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from dynexport.adapters import openvino_frontend

_COMPARISONS = {
    operator.gt: "greater", operator.ge: "greater_equal", operator.lt: "less",
    operator.le: "less_equal", operator.eq: "equal", operator.ne: "not_equal",
}


def _comparison(opset_name: str) -> Callable:
    def convert(context) -> list:
        from openvino import opset13 as ops

        left, right = context.get_input(0), context.get_input(1)
        return [getattr(ops, opset_name)(left, ops.convert_like(right, left)).output(0)]

    return convert


def size_comparison_extensions() -> list:
    """ConversionExtensions for `operator.gt`/`ge`/`lt`/`le`/`eq`/`ne` on sizes."""
    return [openvino_frontend.conversion_extension(str(function), _comparison(name))
            for function, name in _COMPARISONS.items()]
