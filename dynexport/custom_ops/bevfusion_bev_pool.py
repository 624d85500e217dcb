"""BEVFusion's bev_pool (v1): sum camera-frustum features into their BEV voxels.

Upstream (mit-han-lab/bevfusion, `mmdet3d/ops/bev_pool/bev_pool.py` and
`src/bev_pool_cuda.cu`) has two layers, and so has this module:

* `bev_pool(feats, coords, B, D, H, W)`, the Python wrapper, BEVFusion's signature.
  feats (N, C); coords (N, 4) integer with the columns (x, y, z, batch):
  x indexes H, y indexes W, z indexes D, batch indexes B (BEVFusion's `LSSTransform.bev_pool`
  passes `B, nx[2], nx[0], nx[1]` for the `(x, y, z)` voxel coordinates). It computes
  `ranks = x·(W·D·B) + y·(D·B) + z·B + batch`, sorts the points by rank with `argsort` as
  upstream does (not stable=True: torch.onnx 2.13 cannot lower aten.sort.stable; the order
  within a voxel only changes the order of the additions), finds the runs of equal ranks
  and calls the kernel op; returns (B, C, D, H, W).
* `torch.ops.dynexport.bevfusion_bev_pool(feats, coords, interval_lengths, interval_starts,
  b, d, h, w)`, the compiled kernel `bev_pool_ext.bev_pool_forward` (same argument order:
  lengths before starts). For every interval i, with (x, y, z, batch) = coords[starts[i]],
  it writes `out[batch, z, x, y, :] = feats[starts[i] : starts[i] + lengths[i]].sum(0)` into a
  zero (B, D, H, W, C) buffer, which it returns unpermuted, as the kernel does. Its eager
  kernel insists on what the CUDA kernel silently assumes: every coordinate in range, the
  points sorted by rank and the intervals exactly the runs of equal ranks (otherwise the CUDA
  kernel reads the voxel of the first point only, and two intervals of one voxel overwrite
  each other). Under that contract every point simply adds into its own voxel.

Beyond upstream: float64 as well as float32, int32 or int64 coordinates and intervals, no
points at all (N = 0; upstream's wrapper fails indexing `interval_lengths[-1]`), and
eager argument checks that raise TypeError/ValueError naming the argument.

The op, like `bev_pool.py`'s bev_pool_v2 (the worked example of the kit):

* CPU kernel: `torch.segment_reduce` sums each interval (the CUDA kernel's per-interval
  loop), and the sums are written once per voxel;
* fake kernel and autograd (BEVFusion's backward: every point of an interval receives the
  output gradient of the interval's voxel; coordinates and intervals get none);
* decomposition, the CompositeImplicitAutograd kernel that plain `openvino.convert_model(ep)`
  and `torch.onnx.export(ep)` apply: `scatter_add` of every point into its voxel
  (ScatterElements with reduction add: exact and deterministic);
* ONNX translation: the intervals summed by the blocked MatMul form shared with bev_pool_v2
  (onnx_interval_sums.py), written once per voxel by ScatterND without reduction (no
  duplicate indices, so no race in onnxruntime's multi-threaded ScatterND);
* OpenVINO conversion: ScatterNDUpdate with reduction sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dynexport.custom_ops.onnx_interval_sums import blocked_interval_sums
from dynexport.custom_ops.registry import register

__all__ = ["bev_pool"]

_SCHEMA = ("(Tensor feats, Tensor coords, Tensor interval_lengths, Tensor interval_starts, "
           "SymInt b, SymInt d, SymInt h, SymInt w) -> Tensor")
_FLOATS = (torch.float32, torch.float64)
_INDICES = (torch.int32, torch.int64)
_NAME = "bevfusion_bev_pool"


def bev_pool(feats: Tensor, coords: Tensor, B: int, D: int, H: int, W: int) -> Tensor:
    """BEVFusion's `bev_pool`: feats (N, C) float32/float64, coords (N, 4) int32/int64 as
    (x, y, z, batch) with x < H, y < W, z < D, batch < B; returns (B, C, D, H, W) in which
    every voxel holds the sum of its points' features (zeros elsewhere).

    Sorts the points by BEVFusion's rank, finds the runs of equal ranks and calls
    `torch.ops.dynexport.bevfusion_bev_pool`; exports with a dynamic N.
    """
    _check_points(feats, coords)
    _check_sizes(B, D, H, W)
    ranks = _ranks(coords, B, D, H, W)
    order = torch.argsort(ranks)
    feats, coords, ranks = feats[order], coords[order], ranks[order]
    starts, lengths = _runs(ranks)
    out = torch.ops.dynexport.bevfusion_bev_pool.default(feats, coords, lengths, starts,
                                                         B, D, H, W)
    return out.permute(0, 4, 1, 2, 3).contiguous()


def _ranks(coords: Tensor, b, d, h, w) -> Tensor:
    """BEVFusion's sort key: x·(W·D·B) + y·(D·B) + z·B + batch, in int64."""
    x, y, z, batch = coords.long().unbind(1)
    return x * (w * d * b) + y * (d * b) + z * b + batch


def _runs(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Start and length (int64) of every run of equal values in `keys`, for eager and export.

    One nonzero() over the N + 1 run boundaries (the last one at N), so an export has a
    single data-dependent size. No (N - 1)-long slices: torch.export guards N >= 3 on them
    (bev_pool.py's `_run_starts` has one), so each key is compared with a gathered
    predecessor instead.
    """
    position = torch.arange(keys.shape[0], device=keys.device)
    new_run = (keys != keys[(position - 1).clamp(min=0)]) | (position == 0)
    last = torch.ones(1, dtype=torch.bool, device=keys.device)
    bounds = torch.nonzero(torch.cat([new_run, last])).flatten()
    return bounds[:-1], bounds[1:] - bounds[:-1]


def _voxels(coords: Tensor, d, h, w) -> Tensor:
    """Row of out.view(B·D·H·W, C) that the kernel writes for each (x, y, z, batch) row:
    out[batch, z, x, y]."""
    x, y, z, batch = coords.long().unbind(1)
    return ((batch * d + z) * h + x) * w + y


# --- argument checks -----------------------------------------------------------------------------

def _check_points(feats: Tensor, coords: Tensor) -> None:
    if feats.dtype not in _FLOATS:
        raise TypeError(f"{_NAME}: feats must be float32 or float64, got {feats.dtype}")
    if coords.dtype not in _INDICES:
        raise TypeError(f"{_NAME}: coords must be int32 or int64, got {coords.dtype}")
    if feats.dim() != 2:
        raise ValueError(f"{_NAME}: feats must be (N, C), got shape {tuple(feats.shape)}")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"{_NAME}: coords must be (N, 4) as (x, y, z, batch), "
                         f"got shape {tuple(coords.shape)}")
    torch._check_with(ValueError, feats.shape[0] == coords.shape[0],
                      lambda: f"{_NAME}: feats and coords must have one N (rows), got "
                              f"{feats.shape[0]} and {coords.shape[0]}")


def _check_args(feats: Tensor, coords: Tensor, interval_lengths: Tensor,
                interval_starts: Tensor, b, d, h, w) -> None:
    """Dtypes, ranks and sizes; symbolic sizes become export-time guards."""
    _check_points(feats, coords)
    for name, t in (("interval_lengths", interval_lengths),
                    ("interval_starts", interval_starts)):
        if t.dtype not in _INDICES:
            raise TypeError(f"{_NAME}: {name} must be int32 or int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{_NAME}: {name} must be 1-D, got shape {tuple(t.shape)}")
    torch._check_with(ValueError, interval_lengths.shape[0] == interval_starts.shape[0],
                      lambda: f"{_NAME}: interval_lengths and interval_starts must have one "
                              f"length, got {interval_lengths.shape[0]} and "
                              f"{interval_starts.shape[0]}")
    _check_sizes(b, d, h, w)


def _check_sizes(b, d, h, w) -> None:
    for name, size in (("B", b), ("D", d), ("H", h), ("W", w)):
        if not isinstance(size, int | torch.SymInt):
            raise TypeError(f"{_NAME}: {name} must be an int, got {type(size).__name__}")
        torch._check_with(ValueError, size > 0,
                          lambda name=name, size=size: f"{_NAME}: {name} must be positive, "
                                                       f"got {size}")


def _check_values(coords: Tensor, interval_lengths: Tensor, interval_starts: Tensor,
                  b: int, d: int, h: int, w: int) -> None:
    """What only real data can show; the CUDA kernel would write out of bounds or overwrite
    a voxel otherwise."""
    columns = (("x", h, "H"), ("y", w, "W"), ("z", d, "D"), ("batch", b, "B"))
    for column, (name, bound, size) in enumerate(columns):
        values = coords[:, column]
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= bound):
            raise ValueError(f"{_NAME}: coords[:, {column}] ({name}) holds values in "
                             f"[{int(values.min())}, {int(values.max())}] but must lie in "
                             f"[0, {size}) = [0, {bound})")
    ranks = _ranks(coords, b, d, h, w)
    if ranks.numel() > 1 and not bool((ranks[1:] >= ranks[:-1]).all()):
        raise ValueError(f"{_NAME}: feats and coords must be sorted by BEVFusion's rank "
                         "x*(W*D*B) + y*(D*B) + z*B + batch; bev_pool() sorts them")
    starts, lengths = _runs(ranks)
    if not (interval_starts.shape == starts.shape
            and torch.equal(interval_starts.long(), starts)
            and torch.equal(interval_lengths.long(), lengths)):
        raise ValueError(f"{_NAME}: interval_starts/interval_lengths must be the runs of equal "
                         "coords (start and length of each); bev_pool() computes them")


# --- the op: kernel, fake kernel, autograd -------------------------------------------------------

# No device_types (see README.md): a CPU-only kernel would keep run_decompositions from
# applying the decomposition below.
@torch.library.custom_op(f"dynexport::{_NAME}", mutates_args=(), schema=_SCHEMA)
def _bevfusion_bev_pool(feats: Tensor, coords: Tensor, interval_lengths: Tensor,
                        interval_starts: Tensor, b: int, d: int, h: int, w: int) -> Tensor:
    _check_args(feats, coords, interval_lengths, interval_starts, b, d, h, w)
    _check_values(coords, interval_lengths, interval_starts, b, d, h, w)
    c = feats.shape[1]
    out = feats.new_zeros((b * d * h * w, c))
    if interval_starts.numel():
        # The CUDA kernel's loop: one sum per interval, written to the voxel of its first point.
        sums = torch.segment_reduce(feats, "sum", lengths=interval_lengths, axis=0)
        out[_voxels(coords.index_select(0, interval_starts.long()), d, h, w)] = sums
    return out.view(b, d, h, w, c)


@_bevfusion_bev_pool.register_fake
def _bevfusion_bev_pool_fake(feats: Tensor, coords: Tensor, interval_lengths: Tensor,
                             interval_starts: Tensor, b, d, h, w) -> Tensor:
    # Meta tensors and opcheck use this; torch.export's FakeTensorMode runs the
    # decomposition instead (CompositeImplicitAutograd). Neither depends on N or P.
    _check_args(feats, coords, interval_lengths, interval_starts, b, d, h, w)
    return feats.new_empty((b, d, h, w, feats.shape[1]))


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(inputs[1])
    ctx.sizes = inputs[5:8]


def _backward(ctx, out_grad: Tensor) -> tuple:
    """BEVFusion's `bev_pool_backward`: each point of an interval gets the output gradient
    of the interval's voxel. The intervals are the runs of equal coordinates (checked in
    the forward), so that is the gradient of each point's own voxel."""
    (coords,) = ctx.saved_tensors
    c = out_grad.shape[-1]
    feats_grad = out_grad.reshape(-1, c).index_select(0, _voxels(coords, *ctx.sizes))
    return feats_grad, None, None, None, None, None, None, None


_bevfusion_bev_pool.register_autograd(_backward, setup_context=_setup_context)


# --- portable decomposition ----------------------------------------------------------------------

def _decomposition(feats: Tensor, coords: Tensor, interval_lengths: Tensor,
                   interval_starts: Tensor, b, d, h, w) -> Tensor:
    """Aten ops only: scatter_add (→ ScatterElements(add), exact and deterministic in
    onnxruntime and OpenVINO), not index_put(accumulate=True), which torch.onnx lowers to
    ScatterND(add), racy in onnxruntime with duplicate indices and two threads or more."""
    _check_args(feats, coords, interval_lengths, interval_starts, b, d, h, w)
    c = feats.shape[1]
    index = _voxels(coords, d, h, w).unsqueeze(1).expand(-1, c)
    out = feats.new_zeros((b * d * h * w, c)).scatter_add(0, index, feats)
    return out.view(b, d, h, w, c)


# --- ONNX translation (onnxscript, standard ops) -------------------------------------------------

def _onnx(feats, coords, interval_lengths, interval_starts, b, d, h, w):
    """Interval sums written once per voxel: ScatterND without reduction."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    def size(value):  # an int, or a symbolic size arriving as a scalar value
        if isinstance(value, int):
            return op.Constant(value_ints=[value])
        return op.Reshape(op.Cast(value, to=TensorProto.INT64), op.Constant(value_ints=[1]))

    b, d, h, w = (size(v) for v in (b, d, h, w))
    starts = op.Cast(interval_starts, to=TensorProto.INT64)
    points = op.Shape(feats, start=0, end=1)
    sums = blocked_interval_sums(
        op, op.Expand(op.CastLike(op.Constant(value_float=1.0), feats), points), feats,
        op.Range(op.Constant(value_int=0), op.Squeeze(points), op.Constant(value_int=1)),
        starts, op.Cast(interval_lengths, to=TensorProto.INT64))
    first = op.Cast(op.Gather(coords, starts, axis=0), to=TensorProto.INT64)  # (P, 4)

    def column(i):
        return op.Gather(first, op.Constant(value_ints=[i]), axis=1)  # (P, 1)

    x, y, z, batch = (column(i) for i in range(4))
    voxels = op.Add(op.Mul(op.Add(op.Mul(op.Add(op.Mul(batch, d), z), h), x), w), y)
    channels = op.Shape(feats, start=1, end=2)
    grid = op.Concat(b, d, h, w, axis=0)
    zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), feats),
                      op.Concat(op.ReduceProd(grid, keepdims=1), channels, axis=0))
    pooled = op.ScatterND(zeros, voxels, sums)
    return op.Reshape(pooled, op.Concat(grid, channels, axis=0))


# --- OpenVINO conversion -------------------------------------------------------------------------

def _openvino(context) -> list:
    """ScatterNDUpdate(sum) of every point into its voxel."""
    import numpy as np
    import openvino.opset15 as ops

    def ints(*values):
        return ops.constant(np.array(values, dtype=np.int64))

    feats, coords = context.get_input(0), ops.convert(context.get_input(1), "i64")
    b, d, h, w = (ops.reshape(ops.convert(context.get_input(i), "i64"), ints(1), False)
                  for i in range(4, 8))
    x, y, z, batch = (ops.gather(coords, ints(i), ops.constant(np.int64(1)))
                      for i in range(4))  # (N, 1) each
    voxels = ops.add(ops.multiply(ops.add(ops.multiply(
        ops.add(ops.multiply(batch, d), z), h), x), w), y)
    channels = ops.gather(ops.shape_of(feats, "i64"), ints(1), ops.constant(np.int64(0)))
    grid = ops.concat([b, d, h, w], 0)
    zeros = ops.broadcast(ops.convert_like(ops.constant(np.float32(0)), feats),
                          ops.concat([ops.reduce_prod(grid, ints(0), True), channels], 0))
    pooled = ops.scatter_nd_update(zeros, voxels, feats, reduction="sum")
    return [ops.reshape(pooled, ops.concat([grid, channels], 0), False).output(0)]


BEVFUSION_BEV_POOL = register(_bevfusion_bev_pool, decomposition=_decomposition, onnx=_onnx,
                              openvino=_openvino)
