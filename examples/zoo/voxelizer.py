"""A dynamic pillar voxelizer, as PointPillars / CenterPoint-pillar users write it in torch.

    python -m dynexport examples/zoo/voxelizer.py

Points (N, 4: x, y, z, intensity), N dynamic, in a 32 m x 32 m x 8 m range: points outside
are dropped, the rest get floor-divided pillar coordinates (0.5 m pillars, a 64 x 64 grid),
`torch.unique(..., dim=0)` numbers the occupied pillars, each point is decorated as
PointPillars does (offsets from its pillar's mean, a per-pillar `scatter_reduce` "mean", and
from the pillar's centre), a linear layer embeds it, a per-pillar `scatter_reduce` "amax"
pools the pillar, and `index_put` writes the pillars onto a dense BEV canvas by a flat
cell index, as mmdet3d's PointPillarsScatter does. The number of
kept points and of pillars depends on the data. Seeded weights, a generated point cloud.
"""

import torch
from torch import nn

LOW = (-16.0, -16.0, -3.0)
HIGH = (16.0, 16.0, 5.0)
PILLAR = 0.5  # metres; a power of two, so the division is exact in every runtime
GRID = (int((HIGH[0] - LOW[0]) / PILLAR), int((HIGH[1] - LOW[1]) / PILLAR))


class PillarVoxelizer(nn.Module):
    def __init__(self, channels: int = 16):
        super().__init__()
        self.embed = nn.Linear(9, channels)  # x y z r, offsets from mean (3) and centre (2)
        self.channels = channels

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        low, high = torch.tensor(LOW), torch.tensor(HIGH)
        points = points[((points[:, :3] >= low) & (points[:, :3] < high)).all(1)]
        coords = torch.div(points[:, :2] - low[:2], PILLAR, rounding_mode="floor").long()
        pillars, inverse, counts = torch.unique(coords, return_inverse=True, return_counts=True,
                                                dim=0)
        xyz = points[:, :3]
        mean = torch.zeros(pillars.shape[0], 3).scatter_reduce(
            0, inverse[:, None].expand(-1, 3), xyz, "mean", include_self=False)
        centre = (pillars.float() + 0.5) * PILLAR + low[:2]
        decorated = torch.cat([points, xyz - mean[inverse], xyz[:, :2] - centre[inverse]], 1)
        features = torch.relu(self.embed(decorated))
        pooled = torch.zeros(pillars.shape[0], self.channels).scatter_reduce(
            0, inverse[:, None].expand(-1, self.channels), features, "amax", include_self=False)
        canvas = torch.zeros(self.channels, GRID[1] * GRID[0])  # as mmdet3d's PointPillarsScatter
        canvas[:, pillars[:, 1] * GRID[0] + pillars[:, 0]] = pooled.t()
        return {"bev": canvas.view(1, self.channels, GRID[1], GRID[0]), "pillars": pillars,
                "points_per_pillar": counts}


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return PillarVoxelizer().eval()


def cloud(count: int, seed: int) -> tuple[torch.Tensor]:
    """A generated scan: points clustered around a few objects (many per pillar) and spread
    over the range and 2 m past it (dropped), intensity in [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 3, generator=generator) * (torch.tensor(HIGH) - torch.tensor(LOW)) \
        + torch.tensor(LOW)
    near = centres[torch.randint(0, 8, (count // 2,), generator=generator)] \
        + torch.randn(count // 2, 3, generator=generator)
    spread = torch.rand(count - count // 2, 3, generator=generator) \
        * (torch.tensor(HIGH) - torch.tensor(LOW) + 4) + torch.tensor(LOW) - 2
    xyz = torch.cat([near, spread])
    return (torch.cat([xyz, torch.rand(count, 1, generator=generator)], 1),)


def get_inputs():
    return cloud(3000, seed=1)


def get_probe_inputs():
    return cloud(4321, seed=2)


dynamic_shapes = ({0: torch.export.Dim("points", min=2, max=1_000_000)},)
