"""Lift-Splat-Shoot view transformer (FlashOcc's LSSViewTransformer with BEVPoolv2).

Each image feature pixel is lifted to D depth bins along its camera ray (a depth distribution
× C context features), the frustum points are placed in ego coordinates from the camera
parameters, and `bev_pool_v2` sums every point's depth × context into its BEV cell.

Which cell a point lands in depends on the cameras, so the number of points inside the grid
(M) and of occupied cells (P) depend on the data. Two ways to feed `bev_pool_v2`:

* in the graph (`forward`): static shapes. Points outside the grid go to a spare row of cells
  (y = Dy) that is cut off afterwards, and one zero-weight point per cell makes every cell
  occupied, so M = all frustum points + all cells and P = all cells, whatever the cameras.
  The ranks are sorted and the intervals counted with fixed-size tensors only.
* precomputed (`forward_precomputed`): the ranks and intervals of the points inside the grid
  come in as inputs, computed outside the model by `flashocc.ranks.compute_ranks`, as in
  FlashOcc's TensorRT deployment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynexport.custom_ops import bev_pool_v2

from .config import GridConfig


def create_frustum(depth: tuple[float, float, float], input_size: tuple[int, int],
                   downsample: int) -> Tensor:
    """(D, fH, fW, 3) points (u, v, d): feature pixel centres in augmented-image pixels, and
    the depth of each bin in metres."""
    height, width = input_size
    fh, fw = height // downsample, width // downsample
    d = torch.arange(*depth, dtype=torch.float32)
    u = torch.linspace(0, width - 1, fw, dtype=torch.float32)
    v = torch.linspace(0, height - 1, fh, dtype=torch.float32)
    d, v, u = torch.meshgrid(d, v, u, indexing="ij")
    return torch.stack((u, v, d), dim=-1)


def sensor_to_key_ego(sensor2ego: Tensor, ego2global: Tensor) -> Tensor:
    """(B, N, 4, 4) camera → ego frame of camera 0 (FlashOcc's `prepare_inputs`).

    Cameras fire at slightly different times, so each has its own ego pose. FlashOcc inverts
    the key ego pose in float64: in float32 a general 4×4 inverse of a pose ~1 km from the
    global origin loses ~1e-4 m. The rigid-motion inverse (Rᵀ, −Rᵀt) with the translations
    subtracted first keeps float32 exact to the metre offsets between the poses."""
    key_rot_t = ego2global[:, :1, :3, :3].transpose(-1, -2)
    rot = ego2global[..., :3, :3] @ sensor2ego[..., :3, :3]
    shift = ego2global[..., :3, 3:] - ego2global[:, :1, :3, 3:]
    trans = ego2global[..., :3, :3] @ sensor2ego[..., :3, 3:] + shift
    top = torch.cat((key_rot_t @ rot, key_rot_t @ trans), dim=-1)
    bottom = torch.zeros_like(sensor2ego[..., 3:, :])
    bottom[..., 3] = 1.0
    return torch.cat((top, bottom), dim=-2)


def ego_points(frustum: Tensor, sensor2ego: Tensor, intrinsics: Tensor, post_rots: Tensor,
               post_trans: Tensor, bda: Tensor) -> Tensor:
    """(B, N, D, fH, fW, 3) ego coordinates of the frustum points.

    Undo the image augmentation (post_rots, post_trans), back-project with the inverse
    intrinsics, move to the ego frame, then apply the BEV augmentation `bda`."""
    b, n = sensor2ego.shape[:2]
    points = frustum - post_trans.view(b, n, 1, 1, 1, 3)
    points = torch.inverse(post_rots).view(b, n, 1, 1, 1, 3, 3) @ points.unsqueeze(-1)
    # (u·d, v·d, d): homogeneous pixel coordinates scaled by depth.
    points = torch.cat((points[..., :2, :] * points[..., 2:3, :], points[..., 2:3, :]), dim=-2)
    combine = sensor2ego[..., :3, :3] @ torch.inverse(intrinsics)
    points = (combine.view(b, n, 1, 1, 1, 3, 3) @ points).squeeze(-1)
    points = points + sensor2ego[..., :3, 3].view(b, n, 1, 1, 1, 3)
    return (bda.view(b, 1, 1, 1, 1, 3, 3) @ points.unsqueeze(-1)).squeeze(-1)


def voxel_coords(points: Tensor, grid: GridConfig) -> Tensor:
    """(..., 3) int64 cell indices (x, y, z). `.long()` truncates toward zero, as FlashOcc's
    does, so points up to one cell below the lower bound land in cell 0."""
    lower = points.new_tensor([grid.x[0], grid.y[0], grid.z[0]])
    step = points.new_tensor([grid.x[2], grid.y[2], grid.z[2]])
    return ((points - lower) / step).long()


def in_grid(coords: Tensor, grid: GridConfig) -> Tensor:
    """Bool mask of the cell indices inside the (Dx, Dy, Dz) grid."""
    size = coords.new_tensor(grid.size)
    return ((coords >= 0) & (coords < size)).all(dim=-1)


def cell_rank(coords: Tensor, rows: int, grid: GridConfig) -> Tensor:
    """Flat cell index ((b·Dz + z)·rows + y)·Dx + x of (B, ...) cell coordinates."""
    dx, _, dz = grid.size
    batch = torch.arange(coords.shape[0], device=coords.device)
    batch = batch.view(-1, *([1] * (coords.dim() - 2)))
    x, y, z = coords.unbind(-1)
    return ((batch * dz + z) * rows + y) * dx + x


def frustum_indices(b: int, n: int, d: int, fh: int, fw: int, row: int,
                    device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(ranks_depth, ranks_feat) of every frustum point, in (B, N, D, fH, fW) order, for depth
    (B, N, D, fH, row) and feat (B, N, fH, row, C) with row >= fW."""
    depth = torch.arange(b * n * d * fh * row, device=device).view(b, n, d, fh, row)[..., :fw]
    feat = torch.arange(b * n * fh * row, device=device).view(b, n, 1, fh, row)[..., :fw]
    return depth.flatten(), feat.expand(b, n, d, fh, fw).flatten()


def static_pooling_indices(coords: Tensor, grid: GridConfig
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`bev_pool_v2`'s indices (ranks_depth, ranks_feat, ranks_bev, interval_starts,
    interval_lengths), int64, with shapes that depend on no value, for (B, N, D, fH, fW, 3)
    cell coordinates.

    The cells are (B, Dz, Dy + 1, Dx): points outside the grid go to the spare row y = Dy.
    One filler point per cell, reading depth and feat padded with a zero column (fW + 1
    wide), occupies every cell, so there is one interval per cell: M = all frustum points +
    all cells and P = all cells."""
    b, n, d, fh, fw, _ = coords.shape
    dx, dy, dz = grid.size
    device = coords.device
    cells = b * dz * (dy + 1) * dx
    spare = cell_rank(coords.new_tensor([0, dy, 0]).expand_as(coords), dy + 1, grid)
    ranks = torch.where(in_grid(coords, grid), cell_rank(coords, dy + 1, grid), spare)
    ranks_depth, ranks_feat = frustum_indices(b, n, d, fh, fw, fw + 1, device)
    ranks = torch.cat((ranks.flatten(), torch.arange(cells, device=device)))
    ranks_depth = torch.cat((ranks_depth, torch.full((cells,), fw, device=device)))
    ranks_feat = torch.cat((ranks_feat, torch.full((cells,), fw, device=device)))
    # Sort by cell, ties by point index: unique keys make any sort stable (ONNX's TopK has no
    # stable flag, and torch.onnx cannot lower a stable sort).
    order = torch.argsort(ranks * ranks.numel() + torch.arange(ranks.numel(), device=device))
    ranks, ranks_depth, ranks_feat = ranks[order], ranks_depth[order], ranks_feat[order]
    lengths = torch.zeros(cells, dtype=torch.int64, device=device)
    lengths = lengths.scatter_add(0, ranks, torch.ones_like(ranks))
    return ranks_depth, ranks_feat, ranks, torch.cumsum(lengths, 0) - lengths, lengths


class LSSViewTransformer(nn.Module):
    """Depth net + lift + BEV pooling; returns (B, C·Dz, Dy, Dx) BEV features."""

    def __init__(self, grid: GridConfig, input_size: tuple[int, int], downsample: int,
                 in_channels: int, out_channels: int):
        super().__init__()
        self.grid = grid
        self.out_channels = out_channels
        self.D = grid.depth_bins
        self.depth_net = nn.Conv2d(in_channels, self.D + out_channels, 1)
        # Not persistent: FlashOcc checkpoints hold no frustum, it follows from the config.
        self.register_buffer("frustum", create_frustum(grid.depth, input_size, downsample),
                             persistent=False)

    def lift(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, C_in, fH, fW) → depth (B, N, D, fH, fW) softmax, feat (B, N, fH, fW, C)."""
        b, n = x.shape[:2]
        x = self.depth_net(x.flatten(0, 1))
        depth = x[:, :self.D].softmax(dim=1).unflatten(0, (b, n))
        feat = x[:, self.D:self.D + self.out_channels].permute(0, 2, 3, 1).unflatten(0, (b, n))
        return depth, feat

    def forward(self, x: Tensor, sensor2ego: Tensor, intrinsics: Tensor, post_rots: Tensor,
                post_trans: Tensor, bda: Tensor) -> Tensor:
        """In-graph ranks with static shapes (see the module docstring)."""
        depth, feat = self.lift(x)
        points = ego_points(self.frustum, sensor2ego, intrinsics, post_rots, post_trans, bda)
        ranks_depth, ranks_feat, ranks_bev, starts, lengths = static_pooling_indices(
            voxel_coords(points, self.grid), self.grid)
        # The zero column the filler points read (see static_pooling_indices).
        depth = F.pad(depth, (0, 1))
        feat = F.pad(feat, (0, 0, 0, 1))
        dx, dy, dz = self.grid.size
        bev = bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev,
                          (depth.shape[0], dz, dy + 1, dx, self.out_channels), starts, lengths)
        return self.collapse_z(bev[:, :, :, :dy])  # without the spare row

    def forward_precomputed(self, x: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                            ranks_bev: Tensor, interval_starts: Tensor,
                            interval_lengths: Tensor) -> Tensor:
        """Ranks and intervals given (`flashocc.ranks.compute_ranks`)."""
        depth, feat = self.lift(x)
        dx, dy, dz = self.grid.size
        bev = bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev,
                          (depth.shape[0], dz, dy, dx, self.out_channels), interval_starts,
                          interval_lengths)
        return self.collapse_z(bev)

    @staticmethod
    def collapse_z(bev: Tensor) -> Tensor:
        """(B, C, Dz, Dy, Dx) → (B, Dz·C, Dy, Dx), z-major as FlashOcc's concatenation."""
        return bev.movedim(2, 1).flatten(1, 2)
