"""Generated lidar clouds: a ground plane sampled like a spinning lidar (density falling with
range), a few box-shaped objects (car, pedestrian and cyclist sizes) seen as points on their
sides and tops, and some points outside the detection range. Deterministic for a seed."""

import math

import torch

from .model import PointPillarsConfig

# (length, width, height) in metres: KITTI's mean car, pedestrian and cyclist sizes
OBJECT_SIZES = ((3.9, 1.6, 1.56), (0.8, 0.6, 1.73), (1.76, 0.6, 1.73))
GROUND_Z = -1.73  # KITTI's lidar is mounted 1.73 m above the road


def point_cloud(config: PointPillarsConfig, points: int, seed: int,
                objects: int = 6) -> torch.Tensor:
    """(points, 4) float32 as (x, y, z, intensity): about 70 % ground, 20 % objects and 10 %
    outside the range (behind the car, too far or too high), shuffled."""
    g = torch.Generator().manual_seed(seed)
    x_min, y_min, _, x_max, y_max, _ = config.point_cloud_range
    reach = math.hypot(x_max, max(abs(y_min), abs(y_max)))
    n_objects, n_outside = points // 5, points // 10
    n_ground = points - n_objects - n_outside

    # Ground: uniform in range r (so density ~ 1/r per area, as a lidar's rings) and azimuth.
    r = 2.0 + torch.rand(n_ground, generator=g) * (reach - 2.0)
    azimuth = (torch.rand(n_ground, generator=g) - 0.5) * math.pi   # the front half
    ground = torch.stack([r * torch.cos(azimuth), r * torch.sin(azimuth),
                          GROUND_Z + 0.03 * torch.randn(n_ground, generator=g)], 1)

    # Objects: points on the four sides and the top of boxes standing on the ground.
    centres = torch.stack([x_min + 5 + torch.rand(objects, generator=g) * (x_max - x_min - 10),
                           y_min + 3 + torch.rand(objects, generator=g) * (y_max - y_min - 6)], 1)
    kinds = torch.randint(0, len(OBJECT_SIZES), (objects,), generator=g)
    yaws = torch.rand(objects, generator=g) * math.pi
    owner = torch.randint(0, objects, (n_objects,), generator=g)
    size = torch.tensor(OBJECT_SIZES)[kinds[owner]]
    local = (torch.rand(n_objects, 3, generator=g) - 0.5) * size
    face = torch.randint(0, 5, (n_objects,), generator=g)     # 0-3 sides, 4 top
    axis = torch.where(face < 2, 0, 1)
    sign = torch.where(face % 2 == 0, 0.5, -0.5)
    side = face < 4
    local[side, axis[side]] = (sign * size[torch.arange(n_objects), axis])[side]
    local[~side, 2] = size[~side, 2] / 2
    cos, sin = torch.cos(yaws[owner]), torch.sin(yaws[owner])
    boxes = torch.stack([centres[owner, 0] + cos * local[:, 0] - sin * local[:, 1],
                         centres[owner, 1] + sin * local[:, 0] + cos * local[:, 1],
                         GROUND_Z + size[:, 2] / 2 + local[:, 2]], 1)

    # Outside: behind the sensor, beyond the range, or above the range's top.
    outside = torch.stack([(torch.rand(n_outside, generator=g) - 0.3) * 1.5 * reach,
                           (torch.rand(n_outside, generator=g) - 0.5) * 3 * reach,
                           GROUND_Z + torch.rand(n_outside, generator=g) * 8], 1)

    xyz = torch.cat([ground, boxes, outside])
    intensity = torch.rand(points, 1, generator=g)
    cloud = torch.cat([xyz, intensity], 1)
    return cloud[torch.randperm(points, generator=g)].contiguous()


def pad_points(points: torch.Tensor, capacity: int, config: PointPillarsConfig) -> torch.Tensor:
    """`points` followed by filler points 1 km outside the range, (capacity, 4): voxelization
    drops the fillers, so the result is the same as for `points`, with a fixed input size."""
    if len(points) > capacity:
        raise ValueError(f"pad_points: {len(points)} points exceed the capacity {capacity}")
    filler = points.new_zeros(capacity - len(points), points.shape[1])
    filler[:, 0] = config.point_cloud_range[0] - 1000.0
    return torch.cat([points, filler])
