"""A Python `if` on a value computed from the inputs: export can keep only the branch the
example took. `torch.equal` returns a Python bool computed from data; every capture strategy
stops on it, so only the eager run dynexport watches can say where."""

import torch


class Model(torch.nn.Module):
    def forward(self, x, y):
        if torch.equal(x, y):  # hazard
            return x * 2
        return x - y


def get_model():
    return Model()


def get_inputs():
    return (torch.ones(4), torch.ones(4))

tags = {"control-flow", "eager watch"}
expected = ("data_dependent_branch", "error", "data_dependent_branch.from_watch")
