"""avg_pool2d whose window covers the whole input, as a spatial mean.

transformers' EfficientNet pools its last map with `nn.AvgPool2d(hidden_dim, ceil_mode=True)`:
a 320-wide kernel over a 2x2 map (2560 over 19x19 at the released size). PyTorch clips the
window in ceil mode and divides by the clipped area, and onnxruntime agrees; OpenVINO's AvgPool
shape inference rejects a kernel larger than the padded input ("Kernel after dilation has size
(dim: 320) larger than the data shape after padding (dim: 2)", OpenVINO 2026.4), with raw
`ov.convert_model` too. Without padding, a window that covers the whole input yields one value
per channel, the mean of the map: that is what both backends get instead. Other pools, and
sizes not known when the program is decomposed, are kept as captured."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dynexport.adapters.torch_export import OpOverload


def avg_pool2d(self: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int] = (),
               padding: Sequence[int] = (0,), ceil_mode: bool = False,
               count_include_pad: bool = True,
               divisor_override: int | None = None) -> torch.Tensor:
    kernel = _pair(kernel_size)
    strides = _pair(stride) if stride else kernel
    size = tuple(self.shape[-2:])
    covers = (all(isinstance(s, int) for s in size) and all(p == 0 for p in padding)
              and divisor_override is None
              and all(k >= s and _pooled(s, k, st, ceil_mode) == 1
                      for s, k, st in zip(size, kernel, strides, strict=True)))
    if not covers:
        return NotImplemented  # keeps the op: the backends convert an ordinary pool
    return self.mean(dim=(-2, -1), keepdim=True)


def _pair(values: Sequence[int]) -> list[int]:
    return list(values) * (2 if len(values) == 1 else 1)


def _pooled(size: int, kernel: int, stride: int, ceil_mode: bool) -> int:
    """The output length of an unpadded pool, as PyTorch computes it (a last window must start
    inside the input)."""
    span = size - kernel + (stride - 1 if ceil_mode else 0)
    length = span // stride + 1
    if ceil_mode and (length - 1) * stride >= size:
        length -= 1
    return length


def table() -> dict[OpOverload, Callable]:
    """This module's entries of the decomposition table."""
    return {torch.ops.aten.avg_pool2d.default: avg_pool2d}
