"""A tensor sent through numpy inside forward: export cannot follow it into numpy. Strict
capture traces this simple case into tensor ops, so it is a warning here."""

import numpy as np
import torch


class Model(torch.nn.Module):
    def forward(self, x):
        clipped = torch.from_numpy(np.clip(x.detach().numpy(), 0, 1))  # hazard
        return clipped * 2


def get_model():
    return Model()


def get_inputs():
    return (torch.randn(5),)

tags = {"numpy", "eager watch"}
expected = ("numpy_conversion", "warning", "numpy_conversion.from_watch")
