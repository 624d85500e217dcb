"""A Python loop that runs as many times as there are nonzero elements: the count must be a
Python number, and export can only take the example's. Found by draft export alone."""

import torch


class Model(torch.nn.Module):
    def forward(self, x):
        n = torch.nonzero(x > 0).shape[0]
        total = x
        for _ in range(n):  # hazard
            total = total * 1.5
        return total


def get_model():
    return Model()


def get_inputs():
    return (torch.ones(3),)

tags = {"python value", "data-dependent size", "draft export"}
expected = ("tensor_to_python", "error", "tensor_to_python.from_draft")
