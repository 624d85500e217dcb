"""Precomputed ranks: the BEV pooling indices of FlashOcc's `voxel_pooling_prepare_v2`,
computed from camera parameters outside the model, as FlashOcc's TensorRT deployment does
once per camera rig.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from dynexport.custom_ops import prepare_bev_pool_v2

from .config import FlashOccConfig
from .view_transformer import (
    cell_rank,
    create_frustum,
    ego_points,
    frustum_indices,
    in_grid,
    sensor_to_key_ego,
    static_pooling_indices,
    voxel_coords,
)


class Ranks(NamedTuple):
    """`bev_pool_v2`'s index arguments, int32: M points inside the grid sorted by cell, and
    the P runs of points sharing a cell."""

    ranks_depth: Tensor
    ranks_feat: Tensor
    ranks_bev: Tensor
    interval_starts: Tensor
    interval_lengths: Tensor


def _cell_indices(config: FlashOccConfig, sensor2ego: Tensor, ego2global: Tensor,
                  intrinsics: Tensor, post_rots: Tensor, post_trans: Tensor,
                  bda: Tensor) -> Tensor:
    """(B, N, D, fH, fW, 3) cell of every frustum point, with the model's own float32
    geometry and FlashOcc's hard assignment."""
    frustum = create_frustum(config.grid.depth, config.input_size, config.downsample)
    points = ego_points(frustum, sensor_to_key_ego(sensor2ego, ego2global), intrinsics,
                        post_rots, post_trans, bda)
    return voxel_coords(points, config.grid)


@torch.no_grad()
def compute_ranks(config: FlashOccConfig, sensor2ego: Tensor, ego2global: Tensor,
                  intrinsics: Tensor, post_rots: Tensor, post_trans: Tensor,
                  bda: Tensor) -> Ranks:
    """Ranks for a batch of camera rigs, with the model's own float32 geometry, so that
    `forward_precomputed` computes what `forward` computes in the graph."""
    coords = _cell_indices(config, sensor2ego, ego2global, intrinsics, post_rots,
                           post_trans, bda)
    b, n, d, fh, fw, _ = coords.shape
    kept = in_grid(coords, config.grid).flatten()
    ranks_bev = cell_rank(coords, config.grid.size[1], config.grid).flatten()
    ranks_depth, ranks_feat = frustum_indices(b, n, d, fh, fw, fw, coords.device)
    return Ranks(*prepare_bev_pool_v2(ranks_depth[kept], ranks_feat[kept], ranks_bev[kept]))


@torch.no_grad()
def compute_padded_ranks(config: FlashOccConfig, sensor2ego: Tensor, ego2global: Tensor,
                         intrinsics: Tensor, post_rots: Tensor, post_trans: Tensor,
                         bda: Tensor) -> Ranks:
    """The ranks in the in-graph layout (`static_pooling_indices`, FlashOcc's hard assignment),
    computed outside the model, int32: every frustum point plus one zero-weight filler per
    cell (M = num_points + cells), one interval per cell (P = cells), the points outside the
    grid in a spare row of cells. No size depends on the cameras: the form for devices that
    need static shapes (an NPU), read by `forward_padded`."""
    coords = _cell_indices(config, sensor2ego, ego2global, intrinsics, post_rots,
                           post_trans, bda).unsqueeze(-2)  # K = 1 cell per point
    return Ranks(*(t.to(torch.int32) for t in static_pooling_indices(coords, config.grid)))


# FlashOCC's own order: `voxel_pooling_prepare_v2` (view_transformer.py) and
# `BEVDetOCCTRT.get_bev_pool_input` (bevdet_occ.py) return these, int32.
FLASHOCC_ORDER = ("ranks_bev", "ranks_depth", "ranks_feat", "interval_starts", "interval_lengths")


def from_flashocc(flashocc_ranks: Sequence[Tensor], images: Tensor) -> tuple[Tensor, ...]:
    """The example's `--ranks precomputed` inputs, (images (B, N, 3, H, W), ranks_depth,
    ranks_feat, ranks_bev, interval_starts, interval_lengths) with int32 ranks, from
    FlashOCC's tuple (ranks_bev, ranks_depth, ranks_feat, interval_starts, interval_lengths)
    of `get_bev_pool_input` / `voxel_pooling_prepare_v2` (int32 there; int64 is accepted and
    narrowed) and the images: (N, 3, H, W) as FlashOCC's TensorRT entry point takes them
    (one sample), or (B, N, 3, H, W). FlashOCC's tools/export_onnx.py makes the same
    permutation, `metas[1], metas[2], metas[0], metas[3], metas[4]`; the index conventions
    are the same (`cell_rank`, `frustum_indices`), so no value changes."""
    if isinstance(flashocc_ranks, Tensor) or len(flashocc_ranks) != len(FLASHOCC_ORDER):
        raise ValueError(f"from_flashocc: flashocc_ranks must be FlashOCC's 5 tensors "
                         f"{FLASHOCC_ORDER}")
    named = dict(zip(FLASHOCC_ORDER, flashocc_ranks, strict=True))
    for name, t in named.items():
        if not isinstance(t, Tensor) or t.dtype not in (torch.int32, torch.int64):
            kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"from_flashocc: {name} must be an int32 or int64 tensor, got {kind}")
        if t.dim() != 1:
            raise ValueError(f"from_flashocc: {name} must be 1-D, got shape {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= 2 ** 31):
            raise ValueError(f"from_flashocc: {name} must hold int32 indices >= 0")
    points = named["ranks_bev"].numel()
    for name in ("ranks_depth", "ranks_feat"):
        if named[name].numel() != points:
            raise ValueError(f"from_flashocc: {name} has {named[name].numel()} points, "
                             f"ranks_bev {points}")
    starts, lengths = named["interval_starts"], named["interval_lengths"]
    if starts.numel() != lengths.numel() or int(lengths.sum()) != points:
        raise ValueError(f"from_flashocc: interval_starts ({starts.numel()}) and "
                         f"interval_lengths ({lengths.numel()}, summing to "
                         f"{int(lengths.sum())}) must describe the {points} points")
    if points and bool((named["ranks_bev"][1:] < named["ranks_bev"][:-1]).any()):
        raise ValueError("from_flashocc: ranks_bev, the first of FlashOCC's tuple, must be "
                         "sorted; is the tuple in the example's order (ranks_depth first)?")
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError("from_flashocc: images must be a floating-point tensor (the "
                        "normalised images, flashocc.preprocess)")
    if images.dim() == 4:
        images = images[None]
    if images.dim() != 5:
        raise ValueError(f"from_flashocc: images must be (N, 3, H, W) or (B, N, 3, H, W), "
                         f"got {tuple(images.shape)}")
    ranks = Ranks(*(named[name].to(torch.int32).contiguous() for name in Ranks._fields))
    return (images, *ranks)
