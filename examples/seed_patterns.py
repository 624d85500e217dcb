"""The five export problems the seed's author hit, in one small model (a BEV-pooling toy).

    python -m dynexport examples/seed_patterns.py            # reports every hazard, exit 1
    python -m dynexport examples/seed_patterns.py --fixed    # the rewrite: exits 0

Each pattern sits on its own line so the report can point at it:
`forward(self, return_loss=True, **kwargs)` (handled natively), `int(self.grid_size[2])` on a
constant buffer, `if len(kept) == 0`, `int(counts.max())` on data, and
`.cpu().numpy().astype(np.uint8)` on the output.
"""

import argparse
import sys

import numpy as np
import torch
from torch import nn


class SeedPooling(nn.Module):
    """Scatter per-point features into a small grid, as the seed's view transformer did."""

    def __init__(self, cells: int = 16, channels: int = 4):
        super().__init__()
        self.register_buffer("grid_size", torch.tensor([cells, 1, 1]))
        self.encode = nn.Linear(3, channels)
        self.classify = nn.Linear(channels, 3)

    def forward(self, return_loss=True, **kwargs):
        points = kwargs["points"]
        layers = int(self.grid_size[2])
        cells = (points[:, 0] * self.grid_size[0]).long()
        kept = (cells >= 0) & (cells < self.grid_size[0])
        if len(cells[kept]) == 0:
            return None
        counts = torch.bincount(cells[kept], minlength=16)
        scale = int(counts.max())
        grid = torch.zeros(16 * layers, self.encode.out_features)
        grid = grid.index_add(0, cells[kept], self.encode(points[kept]))
        occ = self.classify(grid / scale).argmax(-1)
        return occ.cpu().numpy().astype(np.uint8)


class FixedPooling(SeedPooling):
    """The export-ready rewrite: every value stays a tensor, the output is a tensor."""

    def forward(self, points):
        cells = (points[:, 0] * 16).long()
        kept = (cells >= 0) & (cells < 16)
        cells = torch.where(kept, cells, 16)  # out-of-grid points go to a spare cell
        features = self.encode(points) * kept.unsqueeze(-1)
        rows = cells.unsqueeze(-1).expand_as(features)
        grid = torch.zeros(17, features.shape[-1]).scatter_add(0, rows, features)[:16]
        counts = torch.zeros(17).scatter_add(0, cells, kept.float())[:16]
        occ = self.classify(grid / counts.max().clamp(min=1)).argmax(-1)
        return occ.to(torch.uint8)


def _fixed() -> bool:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixed", action="store_true")
    return parser.parse_args(sys.argv[1:]).fixed


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return (FixedPooling if _fixed() else SeedPooling)().eval()


def _points(seed: int) -> torch.Tensor:
    return torch.rand(64, 3, generator=torch.Generator().manual_seed(seed)) * 1.2 - 0.1


def get_inputs():
    if _fixed():
        return (_points(1),)
    return (), {"return_loss": False, "points": _points(1)}


def get_probe_inputs():
    if _fixed():
        return (_points(2),)
    return (), {"return_loss": False, "points": _points(2)}
