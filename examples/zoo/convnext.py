"""ConvNeXt (transformers' ConvNextForImageClassification, random weights, no download).

    python -m dynexport examples/zoo/convnext.py

ConvNeXt-T's design (patchify stem, 7x7 depthwise blocks, LayerNorm, layer scale) with one
block per stage and 16-128 channels, at 64 px. Batch and image size (multiples of 32) are dynamic.
"""

import torch
from _zoo import pixel_shapes, pixels
from transformers import ConvNextConfig, ConvNextForImageClassification


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)
    return ConvNextForImageClassification(config).eval()


def get_inputs():
    return pixels(2, 64, 64, seed=1)


def get_probe_inputs():
    return pixels(3, 96, 128, seed=2)


# The stem and the three downsamplings divide by 32: sizes are multiples of 32.
dynamic_shapes = pixel_shapes(spatial_multiple=32)
