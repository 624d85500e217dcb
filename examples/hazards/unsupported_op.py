"""A custom op (a compiled extension's, here a torch.library op) with no ONNX or OpenVINO
translation and no decomposition: both conversions fail at its line."""

import torch


@torch.library.custom_op("hazard_cases::opaque_scale", mutates_args=())
def opaque_scale(x: torch.Tensor) -> torch.Tensor:
    return x * 3


@opaque_scale.register_fake
def _(x):
    return torch.empty_like(x)


class Model(torch.nn.Module):
    def forward(self, x):
        return opaque_scale(x) + 1  # hazard


def get_model():
    return Model()


def get_inputs():
    return (torch.randn(4),)

tags = {"custom op", "coverage preflight"}
expected = ("unsupported_op", "error", "unsupported_op.from_conversions")
