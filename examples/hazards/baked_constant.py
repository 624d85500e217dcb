"""A value of the example frozen into the graph: the converted models match eager PyTorch on
the example and not on the probe. Only verification on a second input shows it (the branch
line itself is reported as a data-dependent branch; this rule names the exported method)."""

import torch


class Model(torch.nn.Module):
    def forward(self, x):  # hazard
        if x.sum().item() > 0:
            return x * 2
        return -x


def get_model():
    return Model()


def get_inputs():
    return (torch.ones(4, 3),)


def get_probe_inputs():
    return (-torch.ones(4, 3),)

tags = {"verification", "probe"}
expected = ("baked_constant", "error", "baked_constant.from_verification")
