"""multi_scale_deformable_attn (Deformable DETR, BEVFormer; mmcv's semantics).

One op, `torch.ops.dynexport.multi_scale_deformable_attn`, with everything side by side:

* CPU kernel (any device): mmcv's `multi_scale_deformable_attn_pytorch` formulation, one
  `grid_sample(bilinear, zeros, align_corners=False)` per level on 2·loc − 1, with the
  level sizes read from `spatial_shapes` (eager only, so `.tolist()` is fine there);
* fake kernel (meta tensors) and autograd (the decomposition below differentiated by torch);
* decomposition, the CompositeImplicitAutograd kernel that torch.export's fake tracing,
  plain `openvino.convert_model(ep)` and `torch.onnx.export(ep)` use: index arithmetic on
  the flattened value, `start + y·W + x` per level with H, W and start read from the
  `spatial_shapes` / `level_start_index` tensors, so the sizes stay inputs of the graph
  (nothing is baked) and one graph serves any feature-map sizes with the same number of
  levels. Four bilinear taps, each one `index_select` (ONNX Gather) and one batched
  matmul with the weights, so no (taps × points × channels) temporary is ever stacked.

No separate ONNX or OpenVINO translation: the decomposition converts to plain Gather /
MatMul / elementwise nodes on both, and is measured in tests/test_ms_deform_attn.py and
docs/decompositions.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dynexport.custom_ops.registry import register
from dynexport.decompositions.grid_sample import linear_taps

__all__ = ["multi_scale_deformable_attn"]

_FLOATS = (torch.float32, torch.float64)
_INDICES = (torch.int32, torch.int64)
_NAME = "multi_scale_deformable_attn"


def multi_scale_deformable_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                                sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """mmcv's multi-scale deformable attention, as a torch op that exports and converts.

    value (bs, num_keys, num_heads, head_dims), float32 or float64; spatial_shapes
    (num_levels, 2) int64/int32, the (H, W) of each level, with Σ H·W = num_keys;
    level_start_index (num_levels,), the first key of each level (exclusive cumsum of H·W);
    sampling_locations (bs, num_queries, num_heads, num_levels, num_points, 2), (x, y) in
    [0, 1]; attention_weights (bs, num_queries, num_heads, num_levels, num_points).
    Returns (bs, num_queries, num_heads·head_dims): for each query and head the sum over
    levels and points of weight × bilinear sample of the level's value map at the location
    (as grid_sample(..., padding_mode='zeros', align_corners=False) on 2·loc − 1: pixel
    (i, j) is centred at ((j + 0.5)/W, (i + 0.5)/H), samples outside read zeros).
    Eager calls check the arguments and raise TypeError/ValueError naming the argument.
    """
    return torch.ops.dynexport.multi_scale_deformable_attn.default(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


# --- argument checks -----------------------------------------------------------------------------

def _check_args(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                sampling_locations: Tensor, attention_weights: Tensor) -> None:
    """Dtypes, ranks and sizes; symbolic sizes become export-time guards."""
    if value.dtype not in _FLOATS:
        raise TypeError(f"{_NAME}: value must be float32 or float64, got {value.dtype}")
    for name, t in (("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if t.dtype != value.dtype:
            raise TypeError(f"{_NAME}: {name} must have value's dtype {value.dtype}, "
                            f"got {t.dtype}")
    for name, t in (("spatial_shapes", spatial_shapes),
                    ("level_start_index", level_start_index)):
        if t.dtype not in _INDICES:
            raise TypeError(f"{_NAME}: {name} must be int64 or int32, got {t.dtype}")
    if value.dim() != 4:
        raise ValueError(f"{_NAME}: value must be (bs, num_keys, num_heads, head_dims), "
                         f"got shape {tuple(value.shape)}")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"{_NAME}: spatial_shapes must be (num_levels, 2), "
                         f"got shape {tuple(spatial_shapes.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"{_NAME}: sampling_locations must be (bs, num_queries, num_heads, "
                         f"num_levels, num_points, 2), got {tuple(sampling_locations.shape)}")
    if attention_weights.dim() != 5:
        raise ValueError(f"{_NAME}: attention_weights must be (bs, num_queries, num_heads, "
                         f"num_levels, num_points), got {tuple(attention_weights.shape)}")
    if level_start_index.dim() != 1:
        raise ValueError(f"{_NAME}: level_start_index must be 1-D, "
                         f"got shape {tuple(level_start_index.shape)}")
    bs, _, heads, _ = value.shape
    levels = spatial_shapes.shape[0]
    expected = {"sampling_locations": (sampling_locations.shape[:5],
                                       (bs, None, heads, levels, None)),
                "attention_weights": (attention_weights.shape,
                                      (bs, sampling_locations.shape[1], heads, levels,
                                       sampling_locations.shape[4])),
                "level_start_index": (level_start_index.shape, (levels,))}
    for name, (shape, want) in expected.items():
        for got, size in zip(shape, want, strict=True):
            if size is not None:
                torch._check_with(
                    ValueError, got == size,
                    lambda name=name, shape=shape: (
                        f"{_NAME}: {name} has shape {tuple(shape)}, which does not fit value "
                        f"{tuple(value.shape)} (bs, heads), spatial_shapes "
                        f"{tuple(spatial_shapes.shape)} (levels) and sampling_locations "
                        f"{tuple(sampling_locations.shape)} (queries, points)"))


def _check_values(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor) -> None:
    """What only real data can show: level sizes against num_keys and the start indices."""
    sizes = spatial_shapes.long()
    if sizes.numel() and int(sizes.min()) < 1:
        raise ValueError(f"{_NAME}: spatial_shapes must hold positive (H, W), "
                         f"got {sizes.tolist()}")
    areas = sizes[:, 0] * sizes[:, 1]
    if int(areas.sum()) != value.shape[1]:
        raise ValueError(f"{_NAME}: spatial_shapes {sizes.tolist()} cover {int(areas.sum())} "
                         f"keys but value has num_keys = {value.shape[1]}")
    starts = torch.cumsum(areas, 0) - areas
    if not torch.equal(level_start_index.long(), starts):
        raise ValueError(f"{_NAME}: level_start_index {level_start_index.tolist()} must be the "
                         f"first key of each level, {starts.tolist()} for these spatial_shapes")


# --- the op: kernel, fake kernel, autograd -------------------------------------------------------

def _grid_sample_form(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                      attention_weights: Tensor) -> Tensor:
    """mmcv's pytorch formulation; eager only (the level sizes become Python ints)."""
    bs, _, heads, dims = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # (bs, h·w, heads, dims) -> (bs·heads, dims, h, w)
        v = per_level[level].permute(0, 2, 3, 1).reshape(bs * heads, dims, h, w)
        # (bs, queries, heads, points, 2) -> (bs·heads, queries, points, 2)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(bs * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(bs, heads * dims, queries).transpose(1, 2).contiguous()


# No device_types: see README.md (a CPU-only kernel stops run_decompositions from
# decomposing the op).
@torch.library.custom_op("dynexport::multi_scale_deformable_attn", mutates_args=())
def _ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                    sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    _check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    _check_values(value, spatial_shapes, level_start_index)
    return _grid_sample_form(value, spatial_shapes, sampling_locations, attention_weights)


@_ms_deform_attn.register_fake
def _ms_deform_attn_fake(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                         sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    _check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    bs, _, heads, dims = value.shape
    return value.new_empty((bs, sampling_locations.shape[1], heads * dims))


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: Tensor) -> tuple:
    """Gradients of value, sampling_locations and attention_weights: torch's own backward of
    the decomposition (the derivatives mmcv's CUDA backward computes). Not of the eager
    grid_sample form, whose `.tolist()` cannot be traced (AOT autograd, opcheck)."""
    value, spatial_shapes, starts, locations, weights = ctx.saved_tensors
    wanted = [t.detach().requires_grad_(ctx.needs_input_grad[i])
              for i, t in ((0, value), (3, locations), (4, weights))]
    with torch.enable_grad():
        out = _decomposition(wanted[0], spatial_shapes, starts, wanted[1], wanted[2])
        leaves = [t for t in wanted if t.requires_grad]
        grads = iter(torch.autograd.grad(out, leaves, grad) if leaves else ())
    value_grad, locations_grad, weights_grad = (
        next(grads) if t.requires_grad else None for t in wanted)
    return value_grad, None, None, locations_grad, weights_grad


_ms_deform_attn.register_autograd(_backward, setup_context=_setup_context)


# --- portable decomposition ----------------------------------------------------------------------

def _decomposition(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Index arithmetic on value viewed as a (bs·num_keys·heads, dims) table: key
    start + y·W + x of batch b and head h is row (b·num_keys + key)·heads + h. H, W and
    start come from the tensors (broadcast over the level axis), never from Python ints."""
    _check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    bs, keys, heads, dims = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = spatial_shapes.to(torch.int64).view(levels, 1, 2)  # against (..., levels, points)
    height, width = sizes[..., 0], sizes[..., 1]
    start = level_start_index.to(torch.int64).view(levels, 1)
    dtype = value.dtype
    x = sampling_locations[..., 0] * width.to(dtype) - 0.5  # pixel coordinates
    y = sampling_locations[..., 1] * height.to(dtype) - 0.5
    batch = torch.arange(bs, device=value.device).view(bs, 1, 1, 1, 1) * keys
    head = torch.arange(heads, device=value.device).view(1, 1, heads, 1, 1)
    table = value.reshape(-1, dims)
    rows = bs * queries * heads
    out = None
    for ix, wx in linear_taps(x, width):
        for iy, wy in linear_taps(y, height):
            index = (batch + start + iy * width + ix) * heads + head
            sampled = table.index_select(0, index.reshape(-1)).view(rows, levels * points, dims)
            weight = (wx * wy * attention_weights).reshape(rows, 1, levels * points)
            term = torch.bmm(weight, sampled)
            out = term if out is None else out + term
    return out.view(bs, queries, heads * dims)


MULTI_SCALE_DEFORMABLE_ATTN = register(_ms_deform_attn, decomposition=_decomposition)
