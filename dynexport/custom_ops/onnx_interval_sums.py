"""Interval sums in ONNX, exact and deterministic: the blocked MatMul form that the BEV pools'
ONNX translations share (bev_pool.py, bevfusion_bev_pool.py).

Points sorted by cell, the runs of equal cells given as intervals (start, length) that cover
the points in order: the sum of every interval, Σ weights[j] · table[row_index[j]] over its
points j. onnxruntime has no segment sum, and ScatterND / ScatterElements with reduction add
race or cost a float per point and channel; this form needs neither.

The points, in blocks of K = BLOCK: block b holds points bK..bK+K-1, which meet at most K
intervals. A[b, s, j] is point j's weight where s is its interval's rank within the block
(interval index − the block's first interval index), so A[b] @ rows[b] gives every
interval's piece of that block in one small MatMul, each interval summed alone in the
input's precision (no running sum over other cells, which is where a float32 cumsum loses
a small cell next to a large one). An interval p spanning blocks b0..b1 is the first interval
of every block after b0, so its sum is its piece in b0 plus heads[b1] − heads[b0], heads the
running sum of each block's first piece, kept in float64 over the M/K blocks only. Every
scatter writes distinct positions, so any thread count gives the same bits.

Measured on FlashOcc M0's pool (docs/performance.md, "bev_pool_v2 in onnxruntime and
OpenVINO: the candidates"): 8 points a block beat 16, 32 and a float64 running sum over all
points.
"""

from __future__ import annotations

from typing import Any

BLOCK = 8

Value = Any  # an onnxscript value inside a translation


def blocked_interval_sums(op, weights: Value, table: Value, row_index: Value, starts: Value,
                          lengths: Value) -> Value:
    """(P, C) sums: interval i is Σ weights[j] · table[row_index[j]] over its points j.

    `op` is the onnxscript opset the translation uses; weights (M,) float, like table (R, C);
    row_index (M,) int64; starts and lengths (P,) int64, the runs that cover 0..M-1 in order.
    """
    from onnx import TensorProto

    def ints(*values):
        return op.Constant(value_ints=list(values))

    def scalar(value):
        return op.Constant(value_int=value)

    k = BLOCK
    block, one = ints(k), scalar(1)
    channels = op.Shape(table, start=1, end=2)
    points = op.Shape(row_index)
    blocks = op.Div(op.Add(points, ints(k - 1)), block)
    pad = op.Concat(ints(0), op.Sub(op.Mul(blocks, block), points), axis=0)
    zero = op.CastLike(op.Constant(value_float=0.0), table)
    # The padding points weigh 0, read row 0 and join the last interval. The row indices are
    # padded, not the gathered rows: M ints instead of M × C floats.
    rows = op.Gather(table, op.Pad(row_index, pad), axis=0)
    # Interval index of every point: 1 at each interval start, summed.
    marks = op.ScatterElements(op.Expand(scalar(0), points), starts,
                               op.Expand(one, op.Shape(starts)), axis=0)
    interval = op.Reshape(op.Pad(op.Sub(op.CumSum(marks, ints(0)), one), pad, mode="edge"),
                          op.Concat(blocks, block, axis=0))
    first = op.Slice(interval, ints(0), ints(1), ints(1))  # (blocks, 1)
    within = op.Sub(interval, first)  # < K: a block of K points meets at most K intervals
    block_index = op.Unsqueeze(op.Range(scalar(0), op.Squeeze(blocks), one), ints(1))
    slot = op.Add(op.Mul(block_index, ints(k * k)),
                  op.Add(op.Mul(within, block), op.Reshape(op.Range(scalar(0), scalar(k), one),
                                                           ints(1, k))))
    pooling = op.ScatterElements(op.Expand(zero, op.Mul(op.Mul(blocks, block), block)),
                                 op.Reshape(slot, ints(-1)), op.Pad(weights, pad), axis=0)
    pieces = op.MatMul(op.Reshape(pooling, op.Concat(blocks, block, block, axis=0)),
                       op.Reshape(rows, op.Concat(blocks, block, channels, axis=0)))
    heads = op.CumSum(op.Cast(op.Gather(pieces, scalar(0), axis=1), to=TensorProto.DOUBLE),
                      ints(0))
    first_block = op.Div(starts, block)
    last_block = op.Div(op.Sub(op.Add(starts, lengths), one), block)
    rank = op.Range(scalar(0), op.Squeeze(op.Shape(starts)), one)
    own = op.Add(op.Mul(first_block, block),
                 op.Sub(rank, op.Gather(op.Reshape(first, ints(-1)), first_block, axis=0)))
    carried = op.Sub(op.Gather(heads, last_block, axis=0), op.Gather(heads, first_block, axis=0))
    return op.Add(op.Gather(op.Reshape(pieces, op.Concat(ints(-1), channels, axis=0)), own,
                            axis=0),
                  op.CastLike(carried, table))
