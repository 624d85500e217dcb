"""bev_pool_v2 (BEVDet, FlashOcc): pool camera-frustum features into the BEV grid.

One op, `torch.ops.dynexport.bev_pool_v2`, with everything side by side:

* CPU kernel: the pooling is a sparse matrix product, cells × feature rows with the depth
  weights as entries (duplicates add up), done by torch's CSR @ dense matmul (MKL), ~4× faster
  than gather + index_add_ at FlashOcc M0 size and needing no M × C temporary;
* fake kernel (meta tensors; M and P may be anything) and autograd (BEVDet's backward);
* decomposition, the CompositeImplicitAutograd kernel plain `openvino.convert_model(ep)` and
  `torch.onnx.export(ep)` apply: gather, multiply, `scatter_add` (ScatterElements with
  reduction add: exact and deterministic in onnxruntime and OpenVINO, at any thread count);
* ONNX translation: the blocked form (onnx_interval_sums.py, shared with BEVFusion's pool).
  The sorted points in blocks of 8, each block's intervals summed by a small MatMul, the
  intervals that span blocks joined by a float64 running sum over the blocks, written once
  per cell by ScatterND without reduction (no duplicate indices, so no race in
  onnxruntime's multi-threaded ScatterND);
* OpenVINO conversion: ScatterNDUpdate with reduction sum, which OpenVINO's CPU plugin
  computes exactly and deterministically, and fastest.
"""

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from dynexport.custom_ops.onnx_interval_sums import blocked_interval_sums
from dynexport.custom_ops.registry import register

__all__ = ["bev_pool_v2", "prepare_bev_pool_v2"]

_SCHEMA = (
    "(Tensor depth, Tensor feat, Tensor ranks_depth, Tensor ranks_feat, Tensor ranks_bev, "
    "SymInt[] bev_feat_shape, Tensor interval_starts, Tensor interval_lengths) -> Tensor"
)
_FLOATS = (torch.float32, torch.float64)
_INDICES = (torch.int32, torch.int64)


def bev_pool_v2(depth: Tensor, feat: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                ranks_bev: Tensor, bev_feat_shape: Sequence[int], interval_starts: Tensor,
                interval_lengths: Tensor) -> Tensor:
    """BEVDet's `bev_pool_v2`, as a torch op that exports, converts and differentiates.

    depth (B, N, D, fH, fW) and feat (B, N, fH, fW, C), float32 or float64 alike;
    ranks_depth, ranks_feat, ranks_bev: int32/int64, length M, ranks_bev sorted;
    bev_feat_shape: (B, Dz, Dy, Dx, C);
    interval_starts, interval_lengths: int32/int64, length P, the runs of equal ranks_bev
    (see `prepare_bev_pool_v2`).

    Every point i adds depth.flatten()[ranks_depth[i]] * feat.view(-1, C)[ranks_feat[i]]
    to cell ranks_bev[i] of a zero (B·Dz·Dy·Dx, C) buffer; returns it as (B, C, Dz, Dy, Dx).
    Eager calls check the arguments (ranges, sortedness, intervals) and raise
    TypeError/ValueError instead of reading out of bounds.
    """
    return torch.ops.dynexport.bev_pool_v2.default(
        depth, feat, ranks_depth, ranks_feat, ranks_bev, list(bev_feat_shape),
        interval_starts, interval_lengths)


def prepare_bev_pool_v2(ranks_depth: Tensor, ranks_feat: Tensor, ranks_bev: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sort points by cell and find the runs, as BEVDet's `voxel_pooling_prepare_v2` ends.

    Returns (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths), int32,
    ready for `bev_pool_v2`.
    """
    order = torch.argsort(ranks_bev, stable=True)
    ranks_depth, ranks_feat, ranks_bev = ranks_depth[order], ranks_feat[order], ranks_bev[order]
    starts = _run_starts(ranks_bev)
    lengths = torch.diff(starts, append=starts.new_tensor([ranks_bev.numel()]))
    return tuple(t.to(torch.int32) for t in (ranks_depth, ranks_feat, ranks_bev, starts, lengths))


def _run_starts(sorted_ranks: Tensor) -> Tensor:
    new_run = torch.ones_like(sorted_ranks, dtype=torch.bool)
    new_run[1:] = sorted_ranks[1:] != sorted_ranks[:-1]
    return torch.nonzero(new_run).flatten()


# --- argument checks -----------------------------------------------------------------------------

def _check_args(depth: Tensor, feat: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                ranks_bev: Tensor, bev_feat_shape: Sequence[int], interval_starts: Tensor,
                interval_lengths: Tensor) -> None:
    """Dtypes, ranks and sizes; symbolic sizes become export-time guards."""
    if depth.dtype not in _FLOATS or feat.dtype != depth.dtype:
        raise TypeError(f"bev_pool_v2: depth and feat must both be float32 or both float64, "
                        f"got {depth.dtype} and {feat.dtype}")
    named = {"ranks_depth": ranks_depth, "ranks_feat": ranks_feat, "ranks_bev": ranks_bev,
             "interval_starts": interval_starts, "interval_lengths": interval_lengths}
    for name, t in named.items():
        if t.dtype not in _INDICES:
            raise TypeError(f"bev_pool_v2: {name} must be int32 or int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"bev_pool_v2: {name} must be 1-D, got shape {tuple(t.shape)}")
    if depth.dim() != 5 or feat.dim() != 5:
        raise ValueError(f"bev_pool_v2: depth must be (B, N, D, fH, fW) and feat "
                         f"(B, N, fH, fW, C), got {tuple(depth.shape)} and {tuple(feat.shape)}")
    if len(bev_feat_shape) != 5:
        raise ValueError(f"bev_pool_v2: bev_feat_shape must be (B, Dz, Dy, Dx, C), "
                         f"got {tuple(bev_feat_shape)}")
    for size in bev_feat_shape:
        torch._check_with(ValueError, size > 0,
                          lambda: f"bev_pool_v2: bev_feat_shape {tuple(bev_feat_shape)} "
                                  "must be positive")
    layout = [(depth.shape[0], feat.shape[0]), (depth.shape[1], feat.shape[1]),
              (depth.shape[3], feat.shape[2]), (depth.shape[4], feat.shape[3]),
              (feat.shape[4], bev_feat_shape[4])]
    for a, b in layout:
        torch._check_with(ValueError, a == b,
                          lambda: f"bev_pool_v2: depth {tuple(depth.shape)} and feat "
                                  f"{tuple(feat.shape)} must be (B, N, D, fH, fW) and "
                                  f"(B, N, fH, fW, C) with C = bev_feat_shape[4] = "
                                  f"{bev_feat_shape[4]}")
    m = ranks_depth.shape[0]
    for t in (ranks_feat, ranks_bev):
        torch._check_with(ValueError, t.shape[0] == m,
                          lambda: f"bev_pool_v2: ranks_depth, ranks_feat and ranks_bev must "
                                  f"have one length, got {ranks_depth.shape[0]}, "
                                  f"{ranks_feat.shape[0]}, {ranks_bev.shape[0]}")
    torch._check_with(ValueError, interval_starts.shape[0] == interval_lengths.shape[0],
                      lambda: f"bev_pool_v2: interval_starts and interval_lengths must have "
                              f"one length, got {interval_starts.shape[0]} and "
                              f"{interval_lengths.shape[0]}")


def _check_range(name: str, t: Tensor, bound: int) -> None:
    if t.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(t))
    if low < 0 or high >= bound:
        raise ValueError(f"bev_pool_v2: {name} holds values in [{low}, {high}] but must lie "
                         f"in [0, {bound})")


def _check_values(depth: Tensor, feat: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                  ranks_bev: Tensor, cells: int, interval_starts: Tensor,
                  interval_lengths: Tensor) -> None:
    """What only real data can show; the kernel would read out of bounds otherwise."""
    _check_range("ranks_depth", ranks_depth, depth.numel())
    _check_range("ranks_feat", ranks_feat, feat.numel() // feat.shape[-1])
    _check_range("ranks_bev", ranks_bev, cells)
    if ranks_bev.numel() > 1 and not bool((ranks_bev[1:] >= ranks_bev[:-1]).all()):
        raise ValueError("bev_pool_v2: ranks_bev must be sorted ascending; "
                         "prepare_bev_pool_v2 sorts the ranks and computes the intervals")
    # Every backend form relies on this: the ONNX one sums exactly these runs.
    starts = _run_starts(ranks_bev)
    lengths = torch.diff(starts, append=starts.new_tensor([ranks_bev.numel()]))
    if not (interval_starts.shape == starts.shape
            and torch.equal(interval_starts.long(), starts)
            and torch.equal(interval_lengths.long(), lengths)):
        raise ValueError("bev_pool_v2: interval_starts/interval_lengths must be the runs of "
                         "equal ranks_bev (start and length of each); "
                         "prepare_bev_pool_v2 computes them")


# --- the op: kernel, fake kernel, autograd -------------------------------------------------------

# No device_types: a kernel registered for the CPU key alone makes run_decompositions skip
# the decomposition (measured, torch 2.13), and plain OpenVINO conversion then fails.
@torch.library.custom_op("dynexport::bev_pool_v2", mutates_args=(), schema=_SCHEMA)
def _bev_pool_v2(depth: Tensor, feat: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                 ranks_bev: Tensor, bev_feat_shape: Sequence[int], interval_starts: Tensor,
                 interval_lengths: Tensor) -> Tensor:
    _check_args(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape,
                interval_starts, interval_lengths)
    b, dz, dy, dx, c = bev_feat_shape
    cells = b * dz * dy * dx
    _check_values(depth, feat, ranks_depth, ranks_feat, ranks_bev, cells, interval_starts,
                  interval_lengths)
    # Row pointers of the CSR pooling matrix: ranks_bev is sorted, so each cell's points are
    # one contiguous run of entries.
    row_ptr = torch.zeros(cells + 1, dtype=torch.int64, device=ranks_bev.device)
    torch.cumsum(torch.bincount(ranks_bev, minlength=cells), 0, out=row_ptr[1:])
    weights = depth.reshape(-1).index_select(0, ranks_depth)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        pooling = torch.sparse_csr_tensor(row_ptr, ranks_feat.long(), weights,
                                          (cells, feat.numel() // c), check_invariants=False)
    out = pooling @ feat.reshape(-1, c)
    return out.view(b, dz, dy, dx, c).permute(0, 4, 1, 2, 3).contiguous()


@_bev_pool_v2.register_fake
def _bev_pool_v2_fake(depth: Tensor, feat: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                      ranks_bev: Tensor, bev_feat_shape: Sequence[int],
                      interval_starts: Tensor, interval_lengths: Tensor) -> Tensor:
    # Meta tensors use this; FakeTensorMode (torch.export) prefers the decomposition below,
    # torch's rule for ops with a CompositeImplicitAutograd kernel. Neither depends on M.
    _check_args(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape,
                interval_starts, interval_lengths)
    b, dz, dy, dx, c = bev_feat_shape
    return depth.new_empty((b, c, dz, dy, dx))


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    depth, feat, ranks_depth, ranks_feat, ranks_bev = inputs[:5]
    ctx.save_for_backward(depth, feat, ranks_depth, ranks_feat, ranks_bev)


def _backward(ctx, out_grad: Tensor) -> tuple:
    """BEVDet's: depth_grad[rd] = Σ_c out_grad[rb]·feat[rf]; feat_grad[rf] += out_grad[rb]·
    depth[rd]; accumulated with index_add so repeated ranks add up."""
    depth, feat, ranks_depth, ranks_feat, ranks_bev = ctx.saved_tensors
    c = feat.shape[-1]
    grad_points = out_grad.permute(0, 2, 3, 4, 1).reshape(-1, c).index_select(0, ranks_bev)
    depth_grad = feat_grad = None
    if ctx.needs_input_grad[0]:
        per_point = (grad_points * feat.reshape(-1, c).index_select(0, ranks_feat)).sum(1)
        depth_grad = depth.new_zeros(depth.numel()).index_add(0, ranks_depth, per_point)
        depth_grad = depth_grad.view(depth.shape)
    if ctx.needs_input_grad[1]:
        weights = depth.reshape(-1).index_select(0, ranks_depth).unsqueeze(1)
        feat_grad = feat.new_zeros(feat.numel() // c, c).index_add(
            0, ranks_feat, grad_points * weights).view(feat.shape)
    return depth_grad, feat_grad, None, None, None, None, None, None


_bev_pool_v2.register_autograd(_backward, setup_context=_setup_context)


# --- portable decomposition ----------------------------------------------------------------------

def _decomposition(depth: Tensor, feat: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                   ranks_bev: Tensor, bev_feat_shape: Sequence[int], interval_starts: Tensor,
                   interval_lengths: Tensor) -> Tensor:
    """Aten ops only. Not index_put(accumulate=True) / index_add: torch.onnx lowers those to
    ScatterND(add), which onnxruntime computes wrongly with duplicate indices as soon as it
    uses two threads. scatter_add becomes ScatterElements(add): exact in both runtimes."""
    _check_args(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape,
                interval_starts, interval_lengths)
    b, dz, dy, dx, c = bev_feat_shape
    weights = depth.reshape(-1).index_select(0, ranks_depth).unsqueeze(1)
    values = weights * feat.reshape(-1, c).index_select(0, ranks_feat)
    index = ranks_bev.long().unsqueeze(1).expand(-1, c)
    out = depth.new_zeros((b * dz * dy * dx, c)).scatter_add(0, index, values)
    return out.view(b, dz, dy, dx, c).permute(0, 4, 1, 2, 3).contiguous()


# --- ONNX translation (onnxscript, standard ops) -------------------------------------------------

def _onnx(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape, interval_starts,
          interval_lengths):
    """The intervals summed by onnx_interval_sums' blocked MatMul (rows: feature rows at
    ranks_feat, weights: depth at ranks_depth), written once per cell by ScatterND without
    reduction: no duplicate indices, so no race in onnxruntime's multi-threaded ScatterND."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    def ints(*values):
        return op.Constant(value_ints=list(values))

    if all(isinstance(size, int) for size in bev_feat_shape):
        shape = ints(*bev_feat_shape)
    else:  # symbolic sizes (a dynamic batch) arrive as scalar values
        shape = op.Concat(*(op.Reshape(op.Cast(size, to=TensorProto.INT64), ints(1))
                            for size in bev_feat_shape), axis=0)
    channels = op.Slice(shape, ints(4), ints(5))
    cells = op.ReduceProd(op.Slice(shape, ints(0), ints(4)), keepdims=1)
    starts = op.Cast(interval_starts, to=TensorProto.INT64)
    sums = blocked_interval_sums(
        op, op.Gather(op.Reshape(depth, ints(-1)), ranks_depth, axis=0),
        op.Reshape(feat, op.Concat(ints(-1), channels, axis=0)),
        op.Cast(ranks_feat, to=TensorProto.INT64), starts,
        op.Cast(interval_lengths, to=TensorProto.INT64))
    targets = op.Gather(op.Cast(ranks_bev, to=TensorProto.INT64), starts, axis=0)
    zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), depth),
                      op.Concat(cells, channels, axis=0))
    pooled = op.ScatterND(zeros, op.Unsqueeze(targets, ints(1)), sums)
    return op.Transpose(op.Reshape(pooled, shape), perm=[0, 4, 1, 2, 3])


# --- OpenVINO conversion -------------------------------------------------------------------------

def _openvino(context) -> list:
    """ScatterNDUpdate(sum) on the point products."""
    import numpy as np
    import openvino.opset15 as ops

    def ints(*values):
        return ops.constant(np.array(values, dtype=np.int64))

    depth, feat, ranks_depth, ranks_feat, ranks_bev = (context.get_input(i) for i in range(5))
    shape = ops.convert(context.get_input(5), "i64")
    channels = ops.slice(shape, ints(4), ints(5), ints(1))
    cells = ops.reduce_prod(ops.slice(shape, ints(0), ints(4), ints(1)), ints(0), True)
    axis0 = ops.constant(np.int64(0))
    weights = ops.gather(ops.reshape(depth, ints(-1), False), ranks_depth, axis0)
    rows = ops.gather(ops.reshape(feat, ops.concat([ints(-1), channels], 0), False),
                      ranks_feat, axis0)
    values = ops.multiply(ops.unsqueeze(weights, ints(1)), rows)
    zeros = ops.broadcast(ops.convert_like(ops.constant(np.float32(0)), depth),
                          ops.concat([cells, channels], 0))
    pooled = ops.scatter_nd_update(zeros, ops.unsqueeze(ranks_bev, ints(1)), values,
                                   reduction="sum")
    out = ops.transpose(ops.reshape(pooled, shape, False), ints(0, 4, 1, 2, 3))
    return [out.output(0)]


BEV_POOL_V2 = register(_bev_pool_v2, decomposition=_decomposition, onnx=_onnx,
                       openvino=_openvino)
