"""An FCOS-style one-stage detector with NMS on transformers' ResNet backbone.

    python -m dynexport examples/zoo/detector_nms.py

Backbone: transformers' ResNetBackbone (random weights, no download), stages 2-4 (strides
8, 16, 32). Head: FCOS's shared towers, per-location class scores and (left, top, right,
bottom) distances decoded to corner boxes around each location's centre. Post-processing:
one class-aware `batched_nms` (dynexport's op with torchvision's signature) over every image
of the batch at once, the image index folded into the category, so the batch stays dynamic.
The outputs (boxes, scores, labels, image index of each kept detection) have a data-dependent
length. Batch and image size (multiples of 32) are dynamic.
"""

import torch
from _zoo import pixel_shapes, pixels
from torch import nn
from transformers import ResNetBackbone, ResNetConfig

from dynexport.custom_ops.nms import batched_nms

STRIDES = (8, 16, 32)


class FCOSLike(nn.Module):
    def __init__(self, classes: int = 4, channels: int = 32, iou_threshold: float = 0.5):
        super().__init__()
        config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                              depths=[1, 1, 1, 1], layer_type="basic",
                              out_features=["stage2", "stage3", "stage4"])
        self.backbone = ResNetBackbone(config)
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in (32, 64, 128))
        self.tower = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                                   nn.GroupNorm(8, channels), nn.ReLU())
        self.cls = nn.Conv2d(channels, classes, 3, padding=1)
        self.reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.classes, self.iou_threshold = classes, iou_threshold

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(pixel_values).feature_maps
        boxes, scores = [], []
        for feature, lateral, stride in zip(features, self.lateral, STRIDES, strict=True):
            x = self.tower(lateral(feature))
            b, _, h, w = x.shape
            ys = (torch.arange(h, dtype=x.dtype) + 0.5) * stride
            xs = (torch.arange(w, dtype=x.dtype) + 0.5) * stride
            centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(1, -1, 2)
            ltrb = self.reg(x).exp().mul(stride).flatten(2).transpose(1, 2)  # (b, h*w, 4)
            boxes.append(torch.cat([centres - ltrb[..., :2], centres + ltrb[..., 2:]], -1))
            scores.append(self.cls(x).sigmoid().flatten(2).transpose(1, 2))  # (b, h*w, C)
        boxes_all, scores_all = torch.cat(boxes, 1), torch.cat(scores, 1)
        best, labels = scores_all.max(-1)  # (b, n)
        image = torch.arange(best.shape[0]).unsqueeze(1).expand_as(labels)
        flat_boxes = boxes_all.reshape(-1, 4)
        flat_labels, flat_image = labels.reshape(-1), image.reshape(-1)
        keep = batched_nms(flat_boxes, best.reshape(-1), flat_image * self.classes + flat_labels,
                           self.iou_threshold)
        return {"boxes": flat_boxes[keep], "scores": best.reshape(-1)[keep],
                "labels": flat_labels[keep], "image": flat_image[keep]}


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return FCOSLike().eval()


def get_inputs():
    return pixels(2, 64, 64, seed=1)


def get_probe_inputs():
    return pixels(1, 96, 64, seed=2)


dynamic_shapes = pixel_shapes(max_batch=16, spatial_multiple=32)
