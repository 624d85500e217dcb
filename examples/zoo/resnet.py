"""ResNet (transformers' ResNetForImageClassification, random weights, no download).

    python -m dynexport examples/zoo/resnet.py

A small ResNet-18-shaped network (basic blocks, four stages) at 64 px; batch and image size
(multiples of 32) are dynamic.
"""

import torch
from _zoo import pixel_shapes, pixels
from transformers import ResNetConfig, ResNetForImageClassification


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                          depths=[1, 1, 1, 1], layer_type="basic", num_labels=10)
    return ResNetForImageClassification(config).eval()


def get_inputs():
    return pixels(2, 64, 64, seed=1)


def get_probe_inputs():
    return pixels(3, 96, 128, seed=2)


dynamic_shapes = pixel_shapes(spatial_multiple=32)
