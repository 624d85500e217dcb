"""BEV encoder: FlashOcc's CustomResNet (BasicBlocks, strides 2, 2, 2) and FPN_LSS.

Parameter names follow FlashOcc: `layers.i.j.conv1/bn1/conv2/bn2/downsample` (mmdet's
BasicBlock with a plain strided 3×3 convolution as downsample), FPN_LSS's `conv.{0,1,3,4}`
and `up2.{1,2,4}` (positions inside its nn.Sequential).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and a residual (mmdet's BasicBlock)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class CustomResNet(nn.Module):
    """Stages of BasicBlocks; the first block of each stage strides and widens. Returns every
    stage's output (FlashOcc M0: 128 × 100², 256 × 50², 512 × 25²)."""

    def __init__(self, in_channels: int, num_channels: Sequence[int],
                 num_layer: Sequence[int] = (2, 2, 2), stride: Sequence[int] = (2, 2, 2)):
        super().__init__()
        stages = []
        current = in_channels
        for channels, count, step in zip(num_channels, num_layer, stride, strict=True):
            downsample = nn.Conv2d(current, channels, 3, stride=step, padding=1)
            blocks = [BasicBlock(current, channels, step, downsample)]
            blocks += [BasicBlock(channels, channels) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            current = channels
        self.layers = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.layers:
            x = stage(x)
            feats.append(x)
        return feats


class FPN_LSS(nn.Module):  # noqa: N801 - FlashOcc's class name, kept for recognisability
    """Stage 3 upsampled ×4 onto stage 1, concatenated, two 3×3 conv-BN-ReLU at twice the
    output width, then ×2 bilinear upsampling and conv-BN-ReLU + 1×1 to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int = 4,
                 input_feature_index: tuple[int, int] = (0, 2), extra_upsample: int = 2):
        super().__init__()
        self.input_feature_index = input_feature_index
        self.scale_factor = scale_factor
        wide = out_channels * 2
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, wide, 3, padding=1, bias=False), nn.BatchNorm2d(wide),
            nn.ReLU(),
            nn.Conv2d(wide, wide, 3, padding=1, bias=False), nn.BatchNorm2d(wide), nn.ReLU())
        self.up2 = nn.Sequential(
            nn.Upsample(scale_factor=extra_upsample, mode="bilinear", align_corners=True),
            nn.Conv2d(wide, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        fine, coarse = (feats[i] for i in self.input_feature_index)
        coarse = F.interpolate(coarse, scale_factor=self.scale_factor, mode="bilinear",
                               align_corners=True)
        return self.up2(self.conv(torch.cat([fine, coarse], dim=1)))
