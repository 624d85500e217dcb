"""Swin Transformer (transformers' SwinForImageClassification, random weights, no download).

    python -m dynexport examples/zoo/swin.py

Two stages (windowed and shifted-window attention, patch merging), embedding 16, window 4,
at 64 px. Window partitioning pads and rolls by Python sizes, so the image size is static;
the batch is dynamic.
"""

import torch
from _zoo import pixel_shapes, pixels
from transformers import SwinConfig, SwinForImageClassification


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[2, 2],
                        num_heads=[1, 2], window_size=4, num_labels=10)
    return SwinForImageClassification(config).eval()


def get_inputs():
    return pixels(2, 64, 64, seed=1)


def get_probe_inputs():
    return pixels(3, 64, 64, seed=2)


dynamic_shapes = pixel_shapes()
