"""Vision Transformer (transformers' ViTForImageClassification, random weights, no download).

    python -m dynexport examples/zoo/vit.py

Two encoder layers, hidden size 32, two heads, 8 px patches of a 32 px image (16 tokens plus
the class token). The position embeddings fix the image size; the batch is dynamic.
"""

import torch
from _zoo import pixel_shapes, pixels
from transformers import ViTConfig, ViTForImageClassification


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=10)
    return ViTForImageClassification(config).eval()


def get_inputs():
    return pixels(2, 32, 32, seed=1)


def get_probe_inputs():
    return pixels(3, 32, 32, seed=2)


dynamic_shapes = pixel_shapes()
