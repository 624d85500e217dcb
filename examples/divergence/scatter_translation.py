"""A custom op (a histogram of point features into cells) whose ONNX translation scatters with
ScatterND(reduction="add") over repeated indices: onnxruntime's CPU kernel races on repeated
indices with several intra-op threads (onnxruntime #18048, #23396), so its result changes from
run to run. dynexport reports it as `nondeterminism` at the line that calls the op
(docs/divergence.md)."""

import torch
from torch import Tensor

from dynexport.custom_ops.registry import register

CELLS = 16


@torch.library.custom_op("divergence_demo::cell_sum", mutates_args=())
def cell_sum(features: Tensor, cells: Tensor) -> Tensor:
    out = features.new_zeros(CELLS, features.shape[1])
    return out.index_add(0, cells, features)


@cell_sum.register_fake
def _(features: Tensor, cells: Tensor) -> Tensor:
    return features.new_empty(CELLS, features.shape[1])


def cell_sum_onnx(features, cells):
    from onnxscript import opset18 as op

    zeros = op.Expand(op.Constant(value_float=0.0),
                      op.Concat(op.Constant(value_ints=[CELLS]),
                                op.Slice(op.Shape(features), op.Constant(value_ints=[1]),
                                         op.Constant(value_ints=[2])), axis=0))
    indices = op.Unsqueeze(cells, op.Constant(value_ints=[1]))
    return op.ScatterND(zeros, indices, features, reduction="add")


def cell_sum_openvino(context):
    import numpy as np
    from openvino import opset15 as ops  # ScatterNDUpdate with a reduction: opset 15

    features, cells = context.get_input(0), context.get_input(1)
    width = ops.gather(ops.shape_of(features), ops.constant(np.array([1])), ops.constant(0))
    zeros = ops.broadcast(ops.constant(np.float32(0.0)),
                          ops.concat([ops.constant(np.array([CELLS])), width], 0))
    return [ops.scatter_nd_update(zeros, ops.unsqueeze(cells, ops.constant(1)), features,
                                  reduction="sum").output(0)]


register(torch.ops.divergence_demo.cell_sum.default, onnx=cell_sum_onnx,
         openvino=cell_sum_openvino)


class CellHistogram(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(2, 32)

    def forward(self, points):
        cells = (points[:, 0] * CELLS).long().clamp(0, CELLS - 1)
        features = torch.relu(self.embed(points))
        return torch.ops.divergence_demo.cell_sum(features, cells)


def get_model():
    return CellHistogram().eval()


def get_inputs():
    return (torch.rand(20000, 2, generator=torch.Generator().manual_seed(1)),)


def get_probe_inputs():
    return (torch.rand(15000, 2, generator=torch.Generator().manual_seed(2)),)


dynamic_shapes = ({0: torch.export.Dim("points", min=2)},)
