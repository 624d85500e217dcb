"""Voxel keys in int64 that OpenVINO's CPU plugin computes in int32: one key per voxel of a
grid with a large stride, then the voxels that occur and their point counts (torch.unique).
onnxruntime agrees with eager; OpenVINO returns fewer voxels, because the keys it computes
wrap or saturate at 2**31. `python -m dynexport examples/divergence/int64_keys.py` (exit 1)
names the line that builds the key and why (docs/divergence.md)."""

import torch

# Points of up to 30 sweeps, each sweep's voxels numbered from a multiple of 4e9: the key
# passes int32's 2,147,483,647 from the first sweep on.
SWEEP_STRIDE = 4_000_000_000


class VoxelKeys(torch.nn.Module):
    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = coords[:, 0] * SWEEP_STRIDE + coords[:, 1] * 40_000 + coords[:, 2]
        voxels, counts = torch.unique(keys, return_counts=True)
        return voxels, counts


def get_model() -> torch.nn.Module:
    return VoxelKeys()


def _coords(points: int, seed: int) -> tuple[torch.Tensor]:
    """(sweep, row, column) of each point."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 30, (points, 3), generator=generator),)


def get_inputs() -> tuple[torch.Tensor]:
    return _coords(500, seed=0)


def get_probe_inputs() -> tuple[torch.Tensor]:
    return _coords(700, seed=1)


_points = torch.export.Dim("points", min=2)
dynamic_shapes = ({0: _points},)
