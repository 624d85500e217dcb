"""SegFormer (transformers' SegformerForSemanticSegmentation, random weights, no download).

    python -m dynexport examples/zoo/segformer.py

A semantic segmentation model: the MiT encoder (overlapping patch embeddings, efficient
self-attention with spatial reduction, Mix-FFN) with one block per stage and 8-64 channels,
and the all-MLP decoder that upsamples every stage to 1/4 resolution. 64 px, 5 classes;
batch and image size (multiples of 32) are dynamic.
"""

import torch
from _zoo import pixel_shapes, pixels
from transformers import SegformerConfig, SegformerForSemanticSegmentation


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64],
                             num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32,
                             num_labels=5)
    return SegformerForSemanticSegmentation(config).eval()


def get_inputs():
    return pixels(2, 64, 64, seed=1)


def get_probe_inputs():
    return pixels(1, 96, 128, seed=2)


dynamic_shapes = pixel_shapes(spatial_multiple=32)
