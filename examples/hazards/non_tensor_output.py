"""forward returns a numpy array (the seed's `occ.cpu().numpy().astype(np.uint8)`): ONNX and
OpenVINO models can only return tensors. Strict capture traces this one back into tensor ops,
so it is a warning; code it cannot trace makes it an error."""

import numpy as np
import torch


class Model(torch.nn.Module):
    def forward(self, x):
        labels = x.argmax(-1)
        return labels.cpu().numpy().astype(np.uint8)  # hazard


def get_model():
    return Model()


def get_inputs():
    return (torch.randn(4, 18),)

tags = {"outputs"}
expected = ("non_tensor_output", "warning", "non_tensor_output.from_outputs")
