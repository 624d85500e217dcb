"""A custom op whose ONNX translation has a slip: it normalises over the batch axis instead of
the feature axis. onnxruntime disagrees with eager; OpenVINO (a correct conversion) agrees.
`python -m dynexport examples/divergence/wrong_axis_translation.py` names the op, the line that
calls it and whose translation it is (docs/divergence.md)."""

import torch
from torch import Tensor

from dynexport.custom_ops.registry import register


@torch.library.custom_op("divergence_demo::l1_normalize", mutates_args=())
def l1_normalize(x: Tensor) -> Tensor:
    return x / x.abs().sum(-1, keepdim=True)


@l1_normalize.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


def l1_normalize_onnx(x):
    from onnxscript import opset18 as op

    batch_axis = op.Constant(value_ints=[0])  # the slip: the features are on the last axis
    return op.Div(x, op.ReduceSum(op.Abs(x), batch_axis, keepdims=1))


def l1_normalize_openvino(context):
    from openvino import opset13 as ops

    x = context.get_input(0)
    total = ops.reduce_sum(ops.abs(x), ops.constant([-1]), keep_dims=True)
    return [ops.divide(x, total).output(0)]


register(torch.ops.divergence_demo.l1_normalize.default, onnx=l1_normalize_onnx,
         openvino=l1_normalize_openvino)


class Scorer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Linear(6, 5)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.features(x)) + 1.0
        shares = torch.ops.divergence_demo.l1_normalize(h)
        return self.head(shares).softmax(-1)


def get_model():
    return Scorer().eval()


def get_inputs():
    return (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)),)
