"""index_add as scatter_add: exact in every runtime.

torch.onnx lowers `index_add` to ScatterND with reduction "add", which onnxruntime's CPU kernel
computes wrongly, and differently from run to run, when indices repeat and the session has
more than one thread (onnxruntime #18048, #23396). OpenVINO's PyTorch frontend rejects
`aten.index_add.default` outright ("Got less inputs 4 than expected 5", OpenVINO 2026.4).
scatter_add becomes ScatterElements(add) in ONNX, exact with any thread count, and converts
in OpenVINO."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dynexport.adapters.torch_export import OpOverload


def index_add(self: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor,
              alpha: float = 1) -> torch.Tensor:
    if self.dim() == 0:
        return NotImplemented  # keeps the op; the coverage report names it
    dim = dim % self.dim()
    # scatter_add wants the index in source's shape: index along `dim`, broadcast elsewhere.
    shape = [1] * source.dim()
    shape[dim] = -1
    expanded = index.reshape(shape).expand_as(source)
    if alpha != 1:
        source = source * alpha
    return self.scatter_add(dim, expanded, source.to(self.dtype))


def table() -> dict[OpOverload, Callable]:
    """This module's entries of the decomposition table."""
    return {torch.ops.aten.index_add.default: index_add}
