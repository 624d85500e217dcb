"""A Python `if` on a count that only torch knows is data: the number of nonzero elements,
read as a size. No tensor becomes a Python value on the branch's line, so only draft
export's record of the guard it could not decide finds it."""

import torch


class Model(torch.nn.Module):
    def forward(self, x):
        n = torch.nonzero(x).shape[0]
        if n > 2:  # hazard
            return x * 2
        return x


def get_model():
    return Model()


def get_inputs():
    return (torch.ones(3),)

tags = {"control-flow", "data-dependent size", "draft export"}
expected = ("data_dependent_branch", "error", "data_dependent_branch.from_draft")
