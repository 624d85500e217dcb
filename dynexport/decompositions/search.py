"""searchsorted as bucketize, which OpenVINO converts (Bucketize-3) and dynexport translates for
ONNX (backends/onnx_index_ops.py).

Neither backend converts `aten.searchsorted.Tensor` (torch.onnx 2.13 has no translation;
OpenVINO 2026.4's fx frontend fails on the absent `sorter`), while OpenVINO converts
`aten.bucketize.Tensor`. `searchsorted(seq, v, right=r)` is `bucketize(v, seq, right=r)` for a
1-D `seq`; `side="right"` is `right=True`; a `sorter` is applied to `seq` first. A batched
`seq` (each row of `v` searching its own row) counts the entries below each value, as the
ONNX translation of bucketize does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dynexport.adapters.torch_export import OpOverload

# The fix a report gives where a backend fails on searchsorted (this module declines nothing,
# so this names what it became).
DECLINED = ("dynexport rewrites searchsorted as bucketize (1-D boundaries) or as a count of "
            "smaller boundaries (batched): count them in the model, "
            "`(seq.unsqueeze(-2) < v.unsqueeze(-1)).sum(-1)`")


def searchsorted(sorted_sequence: torch.Tensor, self: torch.Tensor, *, out_int32: bool = False,
                 right: bool = False, side: str | None = None,
                 sorter: torch.Tensor | None = None) -> torch.Tensor:
    right = right or side == "right"
    if sorter is not None:
        sorted_sequence = sorted_sequence.gather(-1, sorter)
    if sorted_sequence.dim() == 1:
        return torch.bucketize(self, sorted_sequence, out_int32=out_int32, right=right)
    values = self.unsqueeze(-1)
    below = sorted_sequence.unsqueeze(-2) <= values if right \
        else sorted_sequence.unsqueeze(-2) < values
    return below.sum(-1, dtype=torch.int32 if out_int32 else torch.int64)


def table() -> dict[OpOverload, Callable]:
    """This module's entries of the decomposition table."""
    return {torch.ops.aten.searchsorted.Tensor: searchsorted}
