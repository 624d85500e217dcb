"""A small image classifier: the simplest script dynexport takes.

    python -m dynexport examples/convnet.py
"""

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1))


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return ConvNet().eval()


def get_inputs():
    return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)


def get_probe_inputs():
    # Another batch size and resolution: the batch and spatial dimensions are dynamic.
    return (torch.randn(3, 3, 48, 40, generator=torch.Generator().manual_seed(2)),)


_batch = torch.export.Dim("batch", min=1, max=64)
_height = torch.export.Dim("height", min=8, max=1024)
_width = torch.export.Dim("width", min=8, max=1024)
dynamic_shapes = ({0: _batch, 2: _height, 3: _width},)
