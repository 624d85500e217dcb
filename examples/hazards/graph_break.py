"""Something dynamo cannot trace (here an explicit graph break): strict capture fails and
dynexport falls back to non-strict capture."""

import torch


class Model(torch.nn.Module):
    def forward(self, x):
        torch._dynamo.graph_break()  # hazard
        return x * 2


def get_model():
    return Model()


def get_inputs():
    return (torch.randn(3),)

tags = {"strict capture"}
expected = ("graph_break", "warning", "graph_break.from_strict_error")
