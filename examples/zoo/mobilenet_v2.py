"""MobileNetV2 (transformers' MobileNetV2ForImageClassification, random weights, no download).

    python -m dynexport examples/zoo/mobilenet_v2.py

MobileNetV3 is not in transformers, and timm/torchvision (which have it) cannot be imported
with the CPU torch here (docs/coverage.md), so the zoo's mobile network is MobileNetV2 at
depth multiplier 0.35, 64 px, with TensorFlow-style "same" padding as in Google's checkpoints.
That padding is computed from `int(features.shape[-2])` (transformers' `apply_tf_padding`),
which fixes the image size at export (declared dynamic, it is specialised: a
`shape_specialization` hazard, draft capture); the batch is dynamic.
"""

import torch
from _zoo import pixel_shapes, pixels, with_batch_statistics
from transformers import MobileNetV2Config, MobileNetV2ForImageClassification


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = MobileNetV2Config(depth_multiplier=0.35, image_size=64, num_labels=10)
    return with_batch_statistics(MobileNetV2ForImageClassification(config), (8, 3, 64, 64))


def get_inputs():
    return pixels(2, 64, 64, seed=1)


def get_probe_inputs():
    return pixels(3, 64, 64, seed=2)


dynamic_shapes = pixel_shapes()
