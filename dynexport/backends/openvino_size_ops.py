"""OpenVINO conversions of Python's arithmetic on sizes (SymInt, SymFloat, SymBool).

A program with dynamic or data-dependent sizes computes with them in Python: `topk(min(k, n))`
after a data-dependent number of boxes becomes an fx node `torch.sym_min(u0, k)`, `x.shape[0]
> 2` as a `torch.cond` predicate `operator.gt(s0, 2)`, `math.floor(n * 0.5)` the nodes
`operator.mul` and `math.floor`. OpenVINO's PyTorch frontend converts only `operator.add`,
`sub`, `mul`, `neg`, `floordiv` and `getitem` of sizes; everything else fails with "No
conversion rule found for operations: <function sym_min at 0x...>". The frontend names a
Python callable target by `str(target)`, so each conversion is registered under that name.

Values reach the frontend as scalars: sizes as i64, comparison results as boolean, Python
float constants as f32. Python's rule decides a result's kind (int op int -> int, anything
with a float -> float, `/` and `sqrt` always float, `floor`/`ceil`/`trunc`/`round` -> int), and
this module builds that kind: i64 or f32. f32 rather than f64 because OpenVINO's CPU plugin
computes f64 in f32 anyway and the frontend already gives float constants as f32; sizes up
to 2**24 stay exact.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch

from dynexport.adapters import openvino_frontend

Output = Any  # an openvino Output: the frontend's value of one fx node


def _ops():
    from openvino import opset13

    return opset13


def _is_float(value: Output) -> bool:
    return value.get_element_type().is_real()


def _as_float(value: Output) -> Output:
    return value if value.get_element_type().get_type_name() == "f32" else \
        _ops().convert(value, "f32").output(0)


def _as_int(value: Output) -> Output:
    return value if value.get_element_type().get_type_name() == "i64" else \
        _ops().convert(value, "i64").output(0)


def _promoted(*values: Output) -> list[Output]:
    """Python's promotion: all float if any is float, else all int (a bool counts as int)."""
    convert = _as_float if any(_is_float(v) for v in values) else _as_int
    return [convert(v) for v in values]


def _binary(build: Callable[[Output, Output], Any]) -> Callable:
    def convert(context) -> list:
        left, right = _promoted(context.get_input(0), context.get_input(1))
        return [build(left, right).output(0)]

    return convert


def _float_unary(build: Callable[[Output], Any]) -> Callable:
    def convert(context) -> list:
        return [build(_as_float(context.get_input(0))).output(0)]

    return convert


def _to_int(round_: Callable[[Output], Output]) -> Callable:
    """`math.floor`/`ceil`/`trunc`, `round`, `sym_int`: an int, exact whatever the input."""
    def convert(context) -> list:
        value = context.get_input(0)
        if not _is_float(value):
            return [_as_int(value)]
        return [_ops().convert(round_(value), "i64").output(0)]

    return convert


def _trunc(value: Output) -> Output:
    # Convert's own float -> int rounding is not specified for every plugin: truncate first.
    ops = _ops()
    negative = ops.less(value, ops.constant(0.0, value.get_element_type()))
    return ops.select(negative, ops.ceiling(value), ops.floor(value)).output(0)


def _true_divide(left: Output, right: Output) -> Any:
    return _ops().divide(_as_float(left), _as_float(right))


def _sym_float(context) -> list:
    return [_as_float(context.get_input(0))]


def _sym_not(context) -> list:
    ops = _ops()
    return [ops.logical_not(ops.convert(context.get_input(0), "boolean")).output(0)]


def _sym_ite(context) -> list:
    ops = _ops()
    condition = ops.convert(context.get_input(0), "boolean")
    then, otherwise = _promoted(context.get_input(1), context.get_input(2))
    return [ops.select(condition, then, otherwise).output(0)]


def _sym_sum(context) -> list:
    """`torch.sym_sum(list)`: the frontend hands the list over as one 1-D tensor."""
    ops = _ops()
    values = context.get_input(0)
    return [ops.reduce_sum(values, ops.constant(0), False).output(0)]


def _logical(build: Callable[[Output, Output], Any]) -> Callable:
    """`&`, `|` of SymBools (the only operands sizes give them)."""
    def convert(context) -> list:
        ops = _ops()
        left, right = (ops.convert(context.get_input(i), "boolean") for i in (0, 1))
        return [build(left, right).output(0)]

    return convert


def _abs(context) -> list:
    return [_ops().abs(context.get_input(0)).output(0)]


def _ops_call(name: str) -> Callable[..., Any]:
    return lambda *values: getattr(_ops(), name)(*values)


def _conversions() -> dict[Callable, Callable]:
    """Each Python callable torch.export leaves in a graph for arithmetic on sizes -> its
    conversion. (`torch._sym_cos` and the other `_sym_*` trigonometry are not in the list:
    torch.export refuses them as graph targets.)"""
    comparisons = {operator.gt: "greater", operator.ge: "greater_equal", operator.lt: "less",
                   operator.le: "less_equal", operator.eq: "equal", operator.ne: "not_equal"}
    table: dict[Callable, Callable] = {
        function: _binary(_ops_call(name)) for function, name in comparisons.items()}
    table |= {
        torch.sym_min: _binary(_ops_call("minimum")),
        torch.sym_max: _binary(_ops_call("maximum")),
        torch.sym_float: _sym_float,
        torch.sym_int: _to_int(_trunc),
        math.trunc: _to_int(_trunc),
        math.floor: _to_int(_ops_call("floor")),
        math.ceil: _to_int(_ops_call("ceiling")),
        round: _to_int(lambda value: _ops().round(value, "half_to_even")),  # Python's round
        torch.sym_sqrt: _float_unary(_ops_call("sqrt")),  # also math.sqrt under dynamo
        torch.sym_ite: _sym_ite,
        torch.sym_not: _sym_not,
        torch.sym_sum: _sym_sum,
        operator.truediv: _binary(_true_divide),
        operator.mod: _binary(_ops_call("floor_mod")),  # Python's %: the divisor's sign
        operator.pow: _binary(_ops_call("power")),
        abs: _abs,
        operator.and_: _logical(_ops_call("logical_and")),
        operator.or_: _logical(_ops_call("logical_or")),
    }
    return table


def size_op_extensions() -> list:
    """ConversionExtensions for Python's arithmetic, comparisons and `torch.sym_*` on sizes."""
    return [openvino_frontend.conversion_extension(str(function), convert)
            for function, convert in _conversions().items()]
