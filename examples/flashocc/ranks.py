"""Precomputed ranks: the BEV pooling indices of FlashOcc's `voxel_pooling_prepare_v2`,
computed from camera parameters outside the model, as FlashOcc's TensorRT deployment does
once per camera rig.
"""

from __future__ import annotations

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


@torch.no_grad()
def compute_ranks(config: FlashOccConfig, sensor2ego: Tensor, ego2global: Tensor,
                  intrinsics: Tensor, post_rots: Tensor, post_trans: Tensor,
                  bda: Tensor) -> Ranks:
    """Ranks for a batch of camera rigs, with the model's own float32 geometry, so that
    `forward_precomputed` computes what `forward` computes in the graph."""
    frustum = create_frustum(config.grid.depth, config.input_size, config.downsample)
    points = ego_points(frustum, sensor_to_key_ego(sensor2ego, ego2global), intrinsics,
                        post_rots, post_trans, bda)
    coords = voxel_coords(points, config.grid)
    b, n, d, fh, fw, _ = coords.shape
    kept = in_grid(coords, config.grid).flatten()
    ranks_bev = cell_rank(coords, config.grid.size[1], config.grid).flatten()
    ranks_depth, ranks_feat = frustum_indices(b, n, d, fh, fw, fw, coords.device)
    return Ranks(*prepare_bev_pool_v2(ranks_depth[kept], ranks_feat[kept], ranks_bev[kept]))
