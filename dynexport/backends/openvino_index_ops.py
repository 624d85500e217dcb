"""OpenVINO conversion of `scatter_reduce` as torch.export spells it (`aten.scatter_reduce.two`).

A dynamic voxelizer (lidar detectors) pools each voxel's points with
`scatter_reduce(0, inverse, feats, "amax" / "mean", include_self=False)`. OpenVINO's PyTorch
frontend has the rule, `translate_scatter_reduce` (src/frontends/pytorch/src/op/scatter.cpp), but
only in its TorchScript table under "aten::scatter_reduce": `FrontEnd::get_supported_ops`
(frontend.cpp) hands an fx decoder `get_supported_ops_fx()` alone, which lacks
"aten.scatter_reduce.two", and a Python extension cannot call a C++ translator. This is the
same lowering, ScatterElementsUpdate-12, whose CPU kernel splits threads over the positions
off the scatter axis and walks the axis serially: the same result at any thread count.

`torch.unique` (`aten._unique2.default`, three outputs) cannot be converted here: for an fx
graph the frontend keeps only a translator's first output, and its `getitem` splits only the
SequenceMark that C++ translators make and Python cannot. decompositions/unique.py replaces it.
"""

from __future__ import annotations

import numpy as np
import torch

from dynexport.adapters import openvino_frontend

# torch's reduction names → ScatterElementsUpdate-12's
_REDUCTIONS = {"sum": "sum", "prod": "prod", "mean": "mean", "amax": "max", "amin": "min"}


def _keyword_flag(context, name: str, default: bool) -> bool:
    """The op's keyword-only bool argument `name`, `default` where the call left it out.

    The fx decoder passes keyword arguments as attributes holding a Constant, which Python's
    `get_attribute` cannot convert (given a default, it returns the default whatever the value);
    `get_input(name)` returns that Constant.
    """
    if not context.has_attribute(name):
        return default
    return bool(context.get_input(name).get_node().get_data())


def _integer_mean(self, index, src, dim, include_self: bool):
    """torch's integer mean: the sum floor-divided by the count. ScatterElementsUpdate's mean
    truncates instead (-4 / 3 gives -1, torch -2). A position no update reaches keeps `self`:
    its count is 0 (1 with include_self), divided by max(count, 1)."""
    from openvino import opset12 as ops

    total = ops.scatter_elements_update(self, index, src, dim, "sum", include_self)
    start = ops.convert_like(ops.broadcast(np.array(int(include_self)), ops.shape_of(self)), self)
    ones = ops.convert_like(ops.broadcast(np.array(1), ops.shape_of(src)), self)
    count = ops.maximum(ops.scatter_elements_update(start, index, ones, dim, "sum", True),
                        ops.convert_like(np.array(1), self))
    return ops.divide(ops.subtract(total, ops.floor_mod(total, count)), count)


def _scatter_reduce(context) -> list:
    """ScatterElementsUpdate-12 with the reduction, `use_init_val` = include_self.

    torch lets `index` be smaller than `src` and reads only src's leading `index.shape` block;
    ScatterElementsUpdate wants updates shaped like the indices, so src is sliced.
    """
    from openvino import opset8, opset12

    self, dim, index, src = (context.get_input(i) for i in range(4))
    # the fx decoder makes a str argument a u8 Constant of its UTF-8 bytes
    reduce = context.get_input(4).get_node().get_data().tobytes().decode()
    include_self = _keyword_flag(context, "include_self", True)
    rank = index.get_partial_shape().rank.get_length()
    src = opset8.slice(src, np.zeros(rank, np.int64), opset8.shape_of(index),
                       np.ones(rank, np.int64))
    if reduce == "mean" and self.get_element_type().is_integral():
        return [_integer_mean(self, index, src, dim, include_self).output(0)]
    return [opset12.scatter_elements_update(self, index, src, dim, _REDUCTIONS[reduce],
                                            include_self).output(0)]


# what each conversion lowers to (the report's `handled`)
TRANSLATED = {torch.ops.aten.scatter_reduce.two: "ScatterElementsUpdate-12 with the reduction"}


def index_op_extensions() -> list:
    """ConversionExtensions for `aten.scatter_reduce.two`."""
    return [openvino_frontend.conversion_extension("aten.scatter_reduce.two", _scatter_reduce)]
