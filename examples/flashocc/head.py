"""FlashOcc's BEVOCCHead2D: BEV features → per-cell occupancy logits of Dz voxels × classes.

Parameter names: `final_conv.conv` (mmcv ConvModule: 3×3 conv with bias, then ReLU) and
`predicter.0` / `predicter.2` (Linear, Softplus, Linear).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import ConvModule


class BEVOCCHead2D(nn.Module):
    """(B, C, Dy, Dx) → logits (B, Dx, Dy, Dz, classes), FlashOcc's channel-to-height layout."""

    def __init__(self, in_dim: int = 256, out_dim: int = 256, dz: int = 16,
                 num_classes: int = 18):
        super().__init__()
        self.dz, self.num_classes = dz, num_classes
        self.final_conv = ConvModule(in_dim, out_dim, 3, padding=1, relu=True)
        self.predicter = nn.Sequential(
            nn.Linear(out_dim, out_dim * 2), nn.Softplus(),
            nn.Linear(out_dim * 2, num_classes * dz))

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        x = self.final_conv(bev).permute(0, 3, 2, 1)  # (B, Dx, Dy, C)
        return self.predicter(x).unflatten(-1, (self.dz, self.num_classes))
