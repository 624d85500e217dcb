"""A tensor turned into a Python float. torch 2.13's strict capture computes it in the graph
for each input (an unbacked value; both runtimes verify on the probe), so it is a warning that
torch._check bounds go unchecked in ONNX and OpenVINO; where only draft export captures the
model, the example's value is kept and it is an error (tensor_to_python_loop_count.py)."""

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
expected = ("tensor_to_python", "warning", "tensor_to_python.from_watch")
