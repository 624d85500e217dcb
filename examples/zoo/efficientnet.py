"""EfficientNet (transformers' EfficientNetForImageClassification, random weights, no download).

    python -m dynexport examples/zoo/efficientnet.py

EfficientNet-B0's block layout with width x0.25 and depth x0.5, at 64 px. Its depthwise
convolutions pad with fixed ZeroPad2d layers computed for `image_size`, so the image size is
static; the batch is dynamic.
"""

import torch
from _zoo import pixel_shapes, pixels, with_batch_statistics
from transformers import EfficientNetConfig, EfficientNetForImageClassification


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = EfficientNetConfig(image_size=64, width_coefficient=0.25, depth_coefficient=0.5,
                                hidden_dim=320, num_labels=10)
    return with_batch_statistics(EfficientNetForImageClassification(config), (8, 3, 64, 64))


def get_inputs():
    return pixels(2, 64, 64, seed=1)


def get_probe_inputs():
    return pixels(3, 64, 64, seed=2)


dynamic_shapes = pixel_shapes()
