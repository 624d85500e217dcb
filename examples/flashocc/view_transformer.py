"""Lift-Splat-Shoot view transformer (FlashOcc's LSSViewTransformer with BEVPoolv2).

Each image feature pixel is lifted to D depth bins along its camera ray (a depth distribution
× C context features), the frustum points are placed in ego coordinates from the camera
parameters, and `bev_pool_v2` sums every point's depth × context into its BEV cell.

Which cell a point lands in depends on the cameras, so the number of points inside the grid
(M) and of occupied cells (P) depend on the data. Two ways to feed `bev_pool_v2`:

* in the graph (`forward`): static shapes. Points outside the grid go to a spare row of cells
  (y = Dy) that is cut off afterwards, and one zero-weight point per cell makes every cell
  occupied, so M = all frustum points + all cells and P = all cells, whatever the cameras.
  The ranks are sorted and the intervals counted with fixed-size tensors only. Which cell a
  point falls in is a step function of float32 coordinates: runtimes that round differently
  in the last bit (measured: up to 4e-5 cell) move a point now and then to the next cell.
  The model computes FlashOcc's hard assignment and says where each point went
  (`point_cells`, an output), so verification counts the points that moved instead of
  hiding them. An optional boundary band (`soft_cells`, `boundary_band` metres) splits the
  points that close to a boundary between both cells, which makes the pooling continuous in
  the coordinates, at the price of no longer being FlashOcc's arithmetic.
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


def apply(matrices: Tensor, vectors: Tensor) -> Tensor:
    """(..., 3, k) matrices applied to (..., k) vectors: (..., 3).

    Written as broadcast products and a sum, not `@`: under OpenVINO's bf16 hint the CPU plugin
    computes every MatMul in bf16 (8 bits of mantissa: ±0.1 m at 40 m), while elementwise
    arithmetic between the model's outputs and the nearest MatMul or convolution stays f32
    (the plugin keeps a graph's tail in its inference precision's f32; `point_cells` makes the
    geometry such a tail)."""
    return (matrices * vectors.unsqueeze(-2)).sum(-1)


def compose(a: Tensor, b: Tensor) -> Tensor:
    """(..., n, k) @ (..., k, m) as broadcast products and a sum (see `apply`)."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def sensor_to_key_ego(sensor2ego: Tensor, ego2global: Tensor) -> Tensor:
    """(B, N, 4, 4) camera → ego frame of camera 0 (FlashOcc's `prepare_inputs`).

    Cameras fire at slightly different times, so each has its own ego pose. FlashOcc inverts
    the key ego pose in float64: in float32 a general 4×4 inverse of a pose ~1 km from the
    global origin loses ~1e-4 m. The rigid-motion inverse (Rᵀ, −Rᵀt) with the translations
    subtracted first keeps float32 exact to the metre offsets between the poses."""
    key_rot_t = ego2global[:, :1, :3, :3].transpose(-1, -2)
    rot = compose(ego2global[..., :3, :3], sensor2ego[..., :3, :3])
    shift = ego2global[..., :3, 3] - ego2global[:, :1, :3, 3]
    trans = apply(ego2global[..., :3, :3], sensor2ego[..., :3, 3]) + shift
    top = torch.cat((compose(key_rot_t, rot), apply(key_rot_t, trans).unsqueeze(-1)), dim=-1)
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
    points = apply(torch.inverse(post_rots).view(b, n, 1, 1, 1, 3, 3), points)
    # (u·d, v·d, d): homogeneous pixel coordinates scaled by depth.
    points = torch.cat((points[..., :2] * points[..., 2:3], points[..., 2:3]), dim=-1)
    combine = compose(sensor2ego[..., :3, :3], torch.inverse(intrinsics))
    points = apply(combine.view(b, n, 1, 1, 1, 3, 3), points)
    points = points + sensor2ego[..., :3, 3].view(b, n, 1, 1, 1, 3)
    return apply(bda.view(b, 1, 1, 1, 1, 3, 3), points)


def cell_coords(points: Tensor, grid: GridConfig) -> Tensor:
    """(..., 3) continuous cell coordinates (x, y, z) of ego points, in cells."""
    lower = points.new_tensor([grid.x[0], grid.y[0], grid.z[0]])
    step = points.new_tensor([grid.x[2], grid.y[2], grid.z[2]])
    return (points - lower) / step


def voxel_coords(points: Tensor, grid: GridConfig) -> Tensor:
    """(..., 3) int64 cell indices (x, y, z). `.long()` truncates toward zero, as FlashOcc's
    does, so points up to one cell below the lower bound land in cell 0."""
    return cell_coords(points, grid).long()


def split_axis(c: Tensor, band: float) -> tuple[Tensor, Tensor, Tensor]:
    """Soft cell assignment along one axis: (own cell, neighbour cell, own weight).

    Cells follow FlashOcc's truncation: cell k >= 1 is [k, k+1), cell 0 is (-1, 1), cell
    k <= -1 is (k-1, k]. A point within `band` cells of its cell's nearer boundary gives part
    of its weight to the cell across that boundary: half at the boundary, falling linearly to
    nothing at `band`. The split is continuous in c, so coordinates that differ in their last
    bits (another runtime's rounding) give weights that differ in their last bits, instead of
    a point that jumps a cell."""
    own = c.long()
    lower = torch.where(own >= 1, own, own - 1)
    upper = torch.where(own >= 0, own + 1, own)
    to_lower, to_upper = c - lower, upper - c
    neighbour = torch.where(to_lower <= to_upper, own - 1, own + 1)
    weight = 0.5 + 0.5 * torch.clamp(torch.minimum(to_lower, to_upper) / band, max=1.0)
    return own, neighbour, weight


def soft_cells(cells: Tensor, grid: GridConfig, band: float) -> tuple[Tensor, Tensor]:
    """Each point's K cells and weights: (..., K, 3) int64 cell indices, (..., K) weights.

    `band` (metres) 0: K = 1, FlashOcc's hard assignment. Otherwise K = 4, the bilinear
    split of `split_axis` along x and y; along z (one layer, every neighbour outside the
    grid) the layer keeps the share of whichever of the point's two z cells it is."""
    if band == 0:
        return cells.long().unsqueeze(-2), torch.ones_like(cells[..., :1])
    if grid.size[2] != 1:
        raise ValueError("a boundary band needs a single z layer (FlashOcc's collapse_z)")
    steps = (grid.x[2], grid.y[2], grid.z[2])
    (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = (
        split_axis(cells[..., axis], band / steps[axis]) for axis in range(3))
    wz = torch.where(z0 == 0, wz, 0.0) + torch.where(z1 == 0, 1.0 - wz, 0.0)
    xs = torch.stack((x0, x0, x1, x1), dim=-1)
    ys = torch.stack((y0, y1, y0, y1), dim=-1)
    weights = torch.stack((wx * wy, wx * (1 - wy), (1 - wx) * wy, (1 - wx) * (1 - wy)), dim=-1)
    return torch.stack((xs, ys, torch.zeros_like(xs)), dim=-1), weights * wz.unsqueeze(-1)


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
    interval_lengths), int64, with shapes that depend on no value, for (B, N, D, fH, fW, K, 3)
    cell coordinates: K cells per frustum point (`soft_cells`).

    The weights go with depth laid out (B, N, D, fH, fW·K + 1) and feat (B, N, fH, fW·K + 1,
    C), feat's first fW columns holding the features, the last column of both zero. The
    cells are (B, Dz, Dy + 1, Dx): points outside the grid go to the spare row y = Dy. One
    filler point per cell, reading the zero column, occupies every cell, so there is one
    interval per cell: M = all point cells + all cells and P = all cells."""
    b, n, d, fh, fw, k, _ = coords.shape
    dx, dy, dz = grid.size
    device = coords.device
    coords = coords.flatten(4, 5)
    row = fw * k + 1
    cells = b * dz * (dy + 1) * dx
    spare = cell_rank(coords.new_tensor([0, dy, 0]).expand_as(coords), dy + 1, grid)
    ranks = torch.where(in_grid(coords, grid), cell_rank(coords, dy + 1, grid), spare)
    ranks_depth = torch.arange(b * n * d * fh * row, device=device).view(b, n, d, fh, row)
    pixel_rows = torch.arange(b * n * fh, device=device).view(b, n, 1, fh, 1) * row
    ranks_feat = pixel_rows + torch.arange(fw * k, device=device) // k
    ranks = torch.cat((ranks.flatten(), torch.arange(cells, device=device)))
    ranks_depth = torch.cat((ranks_depth[..., :fw * k].flatten(),
                             torch.full((cells,), row - 1, device=device)))
    ranks_feat = torch.cat((ranks_feat.expand(b, n, d, fh, fw * k).flatten(),
                            torch.full((cells,), row - 1, device=device)))
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
                 in_channels: int, out_channels: int, boundary_band: float = 0.0):
        super().__init__()
        self.grid = grid
        self.boundary_band = boundary_band  # metres; see soft_cells
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
        """In-graph ranks with static shapes (see the module docstring). Returns the BEV
        features and `point_cells`: (B, N·D·fH·fW) int32, the cell (z·Dy + y)·Dx + x each
        frustum point falls in by FlashOcc's hard assignment, -1 outside the grid."""
        depth, feat = self.lift(x)
        points = ego_points(self.frustum, sensor2ego, intrinsics, post_rots, post_trans, bda)
        cells = cell_coords(points, self.grid)
        coords, weights = soft_cells(cells, self.grid, self.boundary_band)
        bev = self.pool_static(depth, feat, weights, static_pooling_indices(coords, self.grid))
        hard = cells.long()
        cx, cy, cz = hard.unbind(-1)
        dx, dy, _ = self.grid.size
        point_cells = torch.where(in_grid(hard, self.grid), (cz * dy + cy) * dx + cx, -1)
        return bev, point_cells.flatten(1).to(torch.int32)

    def forward_padded(self, x: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                       ranks_bev: Tensor, interval_starts: Tensor,
                       interval_lengths: Tensor) -> Tensor:
        """Ranks given in the in-graph layout (`flashocc.ranks.compute_padded_ranks`): sizes
        that depend on no camera, for devices that need static shapes."""
        depth, feat = self.lift(x)
        return self.pool_static(depth, feat, torch.ones_like(depth).unsqueeze(-1),
                                (ranks_depth, ranks_feat, ranks_bev, interval_starts,
                                 interval_lengths))

    def pool_static(self, depth: Tensor, feat: Tensor, weights: Tensor,
                    indices: tuple[Tensor, ...]) -> Tensor:
        """`bev_pool_v2` on `static_pooling_indices`' layout: K weighted copies of each depth
        (weights (B, N, D, fH, fW, K)), a zero column for the fillers, a spare row of cells
        for the points outside the grid, cut off afterwards."""
        depth = F.pad((depth.unsqueeze(-1) * weights).flatten(-2), (0, 1))
        feat = F.pad(feat, (0, 0, 0, depth.shape[-1] - feat.shape[-2]))
        ranks_depth, ranks_feat, ranks_bev, starts, lengths = indices
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
