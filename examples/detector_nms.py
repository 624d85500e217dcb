"""A tiny one-stage detector: a conv head predicts a box, an objectness score and a class at
every feature-map cell, then `batched_nms` keeps the best box per overlapping group and class.

The number of kept boxes depends on the image, so every output has a data-dependent length;
`dynexport.custom_ops.nms` carries that through torch.export, ONNX (NonMaxSuppression) and
OpenVINO (NonMaxSuppression-9).

    python -m dynexport examples/detector_nms.py
"""

import torch
from torch import nn

from dynexport.custom_ops.nms import batched_nms


class TinyDetector(nn.Module):
    def __init__(self, classes: int = 5, channels: int = 16, stride: int = 4):
        super().__init__()
        self.stride = stride
        self.backbone = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.box = nn.Conv2d(channels, 4, 1)  # (dx, dy, log w, log h) per cell
        self.cls = nn.Conv2d(channels, classes, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        height, width = features.shape[-2:]
        deltas = self.box(features)[0].flatten(1).T  # (cells, 4), batch of one image
        logits = self.cls(features)[0].flatten(1).T  # (cells, classes)
        ys, xs = torch.meshgrid(torch.arange(height, dtype=images.dtype),
                                torch.arange(width, dtype=images.dtype), indexing="ij")
        centres = (torch.stack([xs.flatten(), ys.flatten()], 1) + 0.5) * self.stride
        centres = centres + deltas[:, :2] * self.stride
        sizes = self.stride * 4 * torch.exp(deltas[:, 2:].clamp(max=4.0))
        boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
        scores, labels = logits.sigmoid().max(1)
        keep = batched_nms(boxes, scores, labels, 0.5)
        return boxes[keep], scores[keep], labels[keep]


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyDetector().eval()


def get_inputs():
    return (torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)),)


def get_probe_inputs():
    # Another image: another number of kept boxes (256 cells either way).
    return (2.0 * torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) - 1.0,)
