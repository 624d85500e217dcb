"""circle_nms: CenterPoint's circle NMS (tianweiy/CenterPoint, det3d/core/utils/circle_nms_jit.py,
and `_circle_nms` in det3d/models/bbox_heads/center_head.py) as an op that exports.

CenterPoint's algorithm, reproduced exactly: dets (N, 3) are (x, y, score); visit them by
decreasing score (`scores.argsort()[::-1]`); keep a det unless an already kept one lies within
squared centre distance `thresh` (`(xi - xj)**2 + (yi - yj)**2 <= thresh`: float32 arithmetic,
compared with the float64 threshold as numba promotes; CenterPoint's config calls it
`min_radius` but it is a squared distance); keep at most the first `post_max_size` kept ones.
Equal scores: the higher index first, which is what reversing a stable ascending argsort gives
(CenterPoint's numpy quicksort leaves that order unspecified beyond 16 dets).

One op, `torch.ops.dynexport.circle_nms(dets, thresh, post_max_size)`, returns (N,) int64: the
kept indices in decreasing score order, then -1s. A fixed shape, so `--static` models keep
static shapes (test `>= 0`); `circle_nms()` drops the -1s, which gives CenterPoint's result with
a data-dependent length (an unbacked size under export).

* CPU kernel: the greedy loop, each kept det's suppression one vectorised row (numpy, float32);
* no decomposition: greedy suppression is a loop whose state depends on the data;
* ONNX translation and OpenVINO conversion: the same loop as the runtimes' own `Loop`. The
  dets are sorted by TopK on the reversed scores (equal values lower index first: ONNX's rule,
  OpenVINO's TopK-11 `stable`), the N x N "would suppress" matrix (later in the order and
  within the distance) is built once, then one iteration per det:
  `suppressed |= row[k] & ~suppressed[k]`. The kept ones are capped by a running count and
  moved to the front by a scatter to distinct positions. Both compare float32 distances with
  the largest float32 <= thresh, which is the float64 comparison exactly.
"""

import numpy as np
import torch
from torch import Tensor

from dynexport.custom_ops.registry import register

__all__ = ["circle_nms", "padded_circle_nms"]


def padded_circle_nms(dets: Tensor, thresh: float, post_max_size: int = 83) -> Tensor:
    """CenterPoint's circle NMS with a fixed-size result: (N,) int64, the kept indices in
    decreasing score order (equal scores: higher index first), then -1s.

    dets (N, 3) floating, (x, y, score); thresh >= 0, a squared centre distance; at most
    post_max_size dets are kept (the highest-scoring kept ones)."""
    _check(dets, thresh, post_max_size)
    return torch.ops.dynexport.circle_nms.default(dets, float(thresh), int(post_max_size))


def circle_nms(dets: Tensor, thresh: float, post_max_size: int = 83) -> Tensor:
    """CenterPoint's `_circle_nms(dets, min_radius=thresh, post_max_size)`: the int64 indices
    of the kept dets in decreasing score order (equal scores: higher index first)."""
    keep = padded_circle_nms(dets, thresh, post_max_size)
    return keep[keep >= 0]


def _check(dets: Tensor, thresh: float, post_max_size: int) -> None:
    if not dets.dtype.is_floating_point:
        raise TypeError(f"circle_nms: dets must be floating point, got {dets.dtype}")
    if dets.dim() != 2 or (isinstance(dets.shape[1], int) and dets.shape[1] != 3):
        raise ValueError(f"circle_nms: dets must be (N, 3) as (x, y, score), "
                         f"got shape {tuple(dets.shape)}")
    if not thresh >= 0:
        raise ValueError(f"circle_nms: thresh must be a squared distance >= 0, got {thresh}")
    if post_max_size < 0:
        raise ValueError(f"circle_nms: post_max_size must be >= 0, got {post_max_size}")


def _float32_at_most(value: float) -> float:
    """The largest float32 <= value: for float32 d, d <= it  ⇔  d <= value (float64)."""
    below = np.float32(value)
    if float(below) > value:
        below = np.nextafter(below, np.float32(-np.inf))
    return float(below)


# --- the op: kernel and fake kernel --------------------------------------------------------------

# No device_types (see README.md): the kit's ops are CompositeExplicitAutograd kernels.
@torch.library.custom_op("dynexport::circle_nms", mutates_args=(),
                         schema="(Tensor dets, float thresh, int post_max_size) -> Tensor")
def _circle_nms(dets: Tensor, thresh: float, post_max_size: int) -> Tensor:
    _check(dets, thresh, post_max_size)
    values = dets.detach().to("cpu", torch.float32).numpy()
    order = len(values) - 1 - np.argsort(-values[::-1, 2], kind="stable")   # ties: higher index
    x, y = values[order, 0], values[order, 1]
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(order[i])
        distance = (x[i] - x[i + 1:]) ** 2 + (y[i] - y[i + 1:]) ** 2   # float32, as numba
        suppressed[i + 1:] |= distance.astype(np.float64) <= thresh   # numba promotes
    keep = np.full(len(order), -1, dtype=np.int64)
    keep[:min(len(kept), post_max_size)] = kept[:post_max_size]
    return torch.from_numpy(keep).to(dets.device)


@_circle_nms.register_fake
def _circle_nms_fake(dets: Tensor, thresh: float, post_max_size: int) -> Tensor:
    _check(dets, thresh, post_max_size)
    return dets.new_empty((dets.shape[0],), dtype=torch.int64)


# --- translations --------------------------------------------------------------------------------

def _scan_body():
    """Scan's body (suppressed; row, k) -> suppressed | (row & ~suppressed[k]): one det of the
    greedy pass, k its place in score order, row whom it would suppress. (A Scan, not a Loop:
    torch.onnx's tracer hands a variadic input all the arguments, right only when the variadic
    input comes first, as Scan's does.)"""
    import onnx_ir as ir

    def value(name, dtype, dims):
        return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(dims))

    suppressed = value("circle_nms_suppressed", ir.DataType.BOOL, [None])
    row = value("circle_nms_row", ir.DataType.BOOL, [None])
    k = value("circle_nms_k", ir.DataType.INT64, [])
    tape = ir.tape.Tape()
    live = tape.op("Not", [tape.op("Gather", [suppressed, k], attributes={"axis": 0})])
    updated = tape.op("Or", [suppressed, tape.op("And", [row, live])])
    return ir.Graph([suppressed, row, k], [updated], nodes=tape.nodes, name="circle_nms_step")


def _onnx(dets, thresh: float, post_max_size: int):
    """A Scan over the dets in score order (TopK), one row of a distance matrix per step."""
    import onnx_ir as ir
    from onnx import TensorProto
    from onnxscript import opset18 as op

    def ints(*values):
        return op.Constant(value_ints=list(values))

    values = op.Cast(dets, to=TensorProto.FLOAT)
    count = op.Shape(values, start=0, end=1)                         # [N]
    reversed_scores = op.Slice(op.Gather(values, op.Constant(value_int=2), axis=1),
                               ints(-1), ints(-(2 ** 63)), ints(0), ints(-1))
    # TopK puts equal values lower index first: on reversed scores, higher index first.
    _, reversed_order = op.TopK(reversed_scores, count, axis=0, largest=1, sorted=1)
    order = op.Sub(op.Sub(count, ints(1)), reversed_order)
    xy = op.Gather(op.Slice(values, ints(0), ints(2), ints(1)), order, axis=0)   # (N, 2)
    delta = op.Sub(op.Unsqueeze(xy, ints(1)), op.Unsqueeze(xy, ints(0)))          # (N, N, 2)
    squared = op.Mul(delta, delta)
    distance = op.Add(op.Gather(squared, op.Constant(value_int=0), axis=2),
                      op.Gather(squared, op.Constant(value_int=1), axis=2))
    rank = op.Range(op.Constant(value_int=0), op.Squeeze(count), op.Constant(value_int=1))
    suppresses = op.And(
        op.LessOrEqual(distance, op.Constant(value_float=_float32_at_most(thresh))),
        op.Less(op.Unsqueeze(rank, ints(1)), op.Unsqueeze(rank, ints(0))))

    suppressed = op.Scan(op.Expand(op.Constant(value=ir.tensor(False)), count), suppresses,
                         rank, body=_scan_body(), num_scan_inputs=2)
    kept = op.Not(suppressed)
    place = op.Sub(op.CumSum(op.Cast(kept, to=TensorProto.INT64), op.Constant(value_int=0)),
                   ints(1))                     # among the kept, in score order
    front = op.And(kept, op.Less(place, ints(post_max_size)))
    target = op.Where(front, place, op.Add(rank, count))   # the rest: distinct spare slots
    spare = op.Expand(ints(-1), op.Mul(count, ints(2)))
    return op.Slice(op.ScatterElements(spare, target, order, axis=0), ints(0), count)


def _openvino(context) -> list:
    """The greedy pass as OpenVINO's Loop-5 over the dets in score order (TopK-11, stable)."""
    import openvino as ov
    import openvino.opset8 as ops
    import openvino.opset11 as ops11

    def ints(*values):
        return ops.constant(np.array(values, dtype=np.int64))

    def scalar(value, dtype):
        return ops.constant(np.array(value, dtype=dtype))

    values = ops.convert(context.get_input(0), "f32")
    # OpenVINO's FX decoder hands the float argument over as float32; the shortest decimal
    # that rounds to it is the threshold as written (4.0, 0.175, ...).
    thresh = float(np.format_float_positional(
        np.float32(context.get_values_from_const_input(1)), unique=True))
    post_max_size = int(context.get_values_from_const_input(2))
    count = ops.gather(ops.shape_of(values, "i64"), ints(0), scalar(0, np.int64))   # [N]
    scores = ops.gather(values, scalar(2, np.int64), scalar(1, np.int64))
    reversed_scores = ops.slice(scores, ints(-1), ints(-(2 ** 63)), ints(-1), ints(0))
    reversed_order = ops11.topk(reversed_scores, ops.squeeze(count, ints(0)), 0, "max",
                                "value", "i64", stable=True).output(1)
    order = ops.subtract(ops.subtract(count, ints(1)), reversed_order)
    xy = ops.gather(ops.slice(values, ints(0), ints(2), ints(1), ints(1)), order,
                    scalar(0, np.int64))
    delta = ops.subtract(ops.unsqueeze(xy, ints(1)), ops.unsqueeze(xy, ints(0)))
    squared = ops.multiply(delta, delta)
    distance = ops.add(ops.gather(squared, scalar(0, np.int64), scalar(2, np.int64)),
                       ops.gather(squared, scalar(1, np.int64), scalar(2, np.int64)))
    rank = ops.range(scalar(0, np.int64), ops.squeeze(count, ints(0)), scalar(1, np.int64),
                     "i64")
    suppresses = ops.logical_and(
        ops.less_equal(distance, scalar(_float32_at_most(thresh), np.float32)),
        ops.less(ops.unsqueeze(rank, ints(1)), ops.unsqueeze(rank, ints(0))))

    step = ops.parameter([], ov.Type.i64, "circle_nms_step")
    rows = ops.parameter([-1, -1], ov.Type.boolean, "circle_nms_suppresses")
    state = ops.parameter([-1], ov.Type.boolean, "circle_nms_suppressed")
    live = ops.logical_not(ops.gather(state, step, scalar(0, np.int64)))
    updated = ops.logical_or(state, ops.logical_and(
        ops.gather(rows, step, scalar(0, np.int64)), live))
    body_condition = ops.result(scalar(True, bool))
    body_state = ops.result(updated)
    body = ov.Model([body_condition, body_state], [step, rows, state], "circle_nms_step")

    initial = ops.broadcast(scalar(False, bool), count)
    loop = ops.loop(ops.squeeze(count, ints(0)), scalar(True, bool))
    loop.set_function(body)
    loop.set_special_body_ports([0, 0])     # iteration number: parameter 0; condition: result 0
    loop.set_invariant_input(rows, suppresses.output(0))
    loop.set_merged_input(state, initial.output(0), body_state.output(0))
    suppressed = loop.get_iter_value(body_state.output(0), -1)
    kept = ops.logical_not(suppressed)
    place = ops.subtract(ops.cumsum(ops.convert(kept, "i64"), scalar(0, np.int64)), ints(1))
    front = ops.logical_and(kept, ops.less(place, ints(post_max_size)))
    target = ops.select(front, place, ops.add(rank, count))
    spare = ops.broadcast(ints(-1), ops.multiply(count, ints(2)))
    keep = ops.scatter_elements_update(spare, target, order, scalar(0, np.int64))
    return [ops.slice(keep, ints(0), count, ints(1)).output(0)]


CIRCLE_NMS = register(_circle_nms, onnx=_onnx, openvino=_openvino)
