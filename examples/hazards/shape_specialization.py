"""A dimension declared dynamic compared with a constant: export pins it to the example's
size, and the converted model accepts only that size."""

import torch


class Model(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] == 4:  # hazard
            return x * 2
        return x


def get_model():
    return Model()


def get_inputs():
    return (torch.randn(4, 2),)


dynamic_shapes = ({0: torch.export.Dim("batch")},)
tags = {"dynamic shapes"}
expected = ("shape_specialization", "warning", "shape_specialization.from_capture_errors")
