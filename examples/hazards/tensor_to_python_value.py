"""A tensor turned into a Python float: export bakes the example's value into the graph."""

import torch


class Model(torch.nn.Module):
    def forward(self, x):
        scale = float(x.abs().max())  # hazard
        return x / scale


def get_model():
    return Model()


def get_inputs():
    return (torch.randn(8),)

tags = {"python value", "eager watch"}
expected = ("tensor_to_python", "error", "tensor_to_python.from_watch")
