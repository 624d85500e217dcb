"""An mmdet-style detector head: `forward(self, return_loss=True, **kwargs)` with the images
and camera matrices passed as keyword arguments, as mmdet3d 0.x models are called at test time.

Legacy tracing cannot call this forward; torch.export takes keyword arguments natively, and
`return_loss=False` becomes a constant of the export rather than a graph input.

    python -m dynexport examples/mmdet_style.py
"""

import torch
from torch import nn


class KwargsDetector(nn.Module):
    def __init__(self, channels: int = 8):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, return_loss=True, **kwargs):
        if return_loss:
            raise NotImplementedError("training is not part of this example")
        return self.simple_test(**kwargs)

    def simple_test(self, img_inputs, img_metas=None):
        images, intrinsics = img_inputs
        batch, cameras = images.shape[:2]
        features = self.backbone(images.flatten(0, 1))
        boxes = self.head(features).unflatten(0, (batch, cameras))
        # Scale each camera's box map by its focal length, as a camera-aware head would.
        focal = intrinsics[..., 0, 0].reshape(batch, cameras, 1, 1, 1)
        return {"boxes": boxes * focal / 1000.0, "scores": boxes.sigmoid().amax(dim=2)}


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return KwargsDetector().eval()


def _camera_inputs(seed: int, focal: float):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(1, 2, 3, 32, 48, generator=generator)
    intrinsics = torch.eye(3).repeat(1, 2, 1, 1)
    intrinsics[..., 0, 0] = focal
    intrinsics[..., 1, 1] = focal
    return images, intrinsics


def get_inputs():
    return (), {"return_loss": False, "img_inputs": _camera_inputs(1, focal=1260.0)}


def get_probe_inputs():
    return (), {"return_loss": False, "img_inputs": _camera_inputs(2, focal=800.0)}
