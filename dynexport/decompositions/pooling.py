"""Average and max pooling (1-D, 2-D, 3-D) in ceil mode where a backend fails or differs,
as explicit padding and a floor-mode pool of a kernel no larger than the padded map.

PyTorch's ceil mode adds a last window that may run past the padded input, clips every window
to it, and drops a last window that would start in the right padding. Measured with torch 2.13,
onnxruntime 1.32, OpenVINO 2026.4, raw `torch.onnx.export` / `ov.convert_model`:

- a kernel larger than the padded map (transformers' EfficientNet: `AvgPool2d(320,
  ceil_mode=True)` over 2x2): OpenVINO rejects it at compile, avg and max ("Kernel after
  dilation has size (dim: 320) larger than the data shape after padding (dim: 2)");
- a dropped last window: ONNX's shape inference counts it (onnx.checker fails the model on
  the output shape torch.onnx declares; onnxruntime itself computes torch's shape);
- avg with count_include_pad and a last window past the right padding: OpenVINO divides by
  another count than PyTorch's (wrong by up to 0.38 on N(0, 1) inputs, no error);
- avg with divisor_override: OpenVINO has no conversion, onnxruntime's numbers differ.

The rewrite pads explicitly (zeros for avg, -inf for max: PyTorch's own implicit padding
values) up to exactly the span the output windows cover, pools in floor mode with a kernel
clipped to the padded map (for a kernel larger than it, every window clips to the whole
padded map anyway), and for avg scales each output by kernel area / PyTorch's divisor, built
from `arange` along each axis (1 where a window is whole). Every other pool is kept as
captured, as are symbolic spatial sizes, max with a clipped dilated kernel, and non-float max
pools."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dynexport.adapters.torch_export import OpOverload

aten = torch.ops.aten
_AVG = {1: aten.avg_pool1d.default, 2: aten.avg_pool2d.default, 3: aten.avg_pool3d.default}
_MAX = {1: aten.max_pool1d.default, 2: aten.max_pool2d.default, 3: aten.max_pool3d.default}
# The fix a report gives where a backend fails on these ops: this module declined the call.
DECLINED = ("dynexport rewrites a pool only where a window runs past the map (a kernel larger "
            "than the padded input, a ceil-mode last window) or an avg pool has "
            "divisor_override, and never a dilated max pool whose kernel is larger than the "
            "map: pad the input with F.pad and pool with ceil_mode=False and a kernel within "
            "the map")


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a pool, with PyTorch's output-size rule."""

    size: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    ceil_mode: bool

    @property
    def span(self) -> int:  # of one window, dilation included
        return self.dilation * (self.kernel - 1) + 1

    def _counted(self) -> int:  # before ceil mode's rule for a last window in the padding
        extra = self.stride - 1 if self.ceil_mode else 0
        return (self.size + 2 * self.padding - self.span + extra) // self.stride + 1

    @property
    def outputs(self) -> int:
        count = self._counted()
        return count - 1 if self.ceil_mode and (count - 1) * self.stride >= \
            self.size + self.padding else count

    @property
    def kernel_too_large(self) -> bool:
        return self.span > self.size + 2 * self.padding

    @property
    def drops_last_window(self) -> bool:
        return self.outputs < self._counted()

    @property
    def past_padding(self) -> bool:  # the last window runs past the right padding
        return (self.outputs - 1) * self.stride + self.span > self.size + 2 * self.padding

    @property
    def clipped_kernel(self) -> int:  # dilation 1: a larger window clips to the padded map
        return min(self.kernel, self.size + 2 * self.padding)

    @property
    def right_padding(self) -> int:  # what floor mode needs for exactly `outputs` windows
        span = (self.outputs - 1) * self.stride + self.dilation * (self.clipped_kernel - 1) + 1
        return max(span - self.size - self.padding, 0)


def avg_pool1d(self: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int] = (),
               padding: Sequence[int] = (0,), ceil_mode: bool = False,
               count_include_pad: bool = True) -> torch.Tensor:
    return _avg_pool(self, 1, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(self: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int] = (),
               padding: Sequence[int] = (0,), ceil_mode: bool = False,
               count_include_pad: bool = True,
               divisor_override: int | None = None) -> torch.Tensor:
    return _avg_pool(self, 2, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def avg_pool3d(self: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int] = (),
               padding: Sequence[int] = (0,), ceil_mode: bool = False,
               count_include_pad: bool = True,
               divisor_override: int | None = None) -> torch.Tensor:
    return _avg_pool(self, 3, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def max_pool1d(self: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int] = (),
               padding: Sequence[int] = (0,), dilation: Sequence[int] = (1,),
               ceil_mode: bool = False) -> torch.Tensor:
    return _max_pool(self, 1, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool2d(self: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int] = (),
               padding: Sequence[int] = (0,), dilation: Sequence[int] = (1,),
               ceil_mode: bool = False) -> torch.Tensor:
    return _max_pool(self, 2, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool3d(self: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int] = (),
               padding: Sequence[int] = (0,), dilation: Sequence[int] = (1,),
               ceil_mode: bool = False) -> torch.Tensor:
    return _max_pool(self, 3, kernel_size, stride, padding, dilation, ceil_mode)


def _avg_pool(x: torch.Tensor, dims: int, kernel_size: Sequence[int], stride: Sequence[int],
              padding: Sequence[int], ceil_mode: bool, count_include_pad: bool,
              divisor_override: int | None) -> torch.Tensor:
    axes = _axes(x, dims, kernel_size, stride, padding, (1,), ceil_mode)
    if axes is None or not (divisor_override is not None or any(
            a.kernel_too_large or a.drops_last_window or count_include_pad and a.past_padding
            for a in axes)):
        return NotImplemented  # the backends convert it as PyTorch computes it
    kernel = [a.clipped_kernel for a in axes]
    pooled = _AVG[dims](_padded(x, axes, 0.0), kernel, [a.stride for a in axes], [0] * dims)
    if divisor_override is not None:
        area = 1
        for k in kernel:
            area *= k
        return pooled * (area / divisor_override)
    for index, axis in enumerate(axes):
        scale = _window_scale(axis, count_include_pad, x)
        if scale is not None:
            pooled = pooled * scale.view(-1, *[1] * (dims - 1 - index))
    return pooled


def _max_pool(x: torch.Tensor, dims: int, kernel_size: Sequence[int], stride: Sequence[int],
              padding: Sequence[int], dilation: Sequence[int], ceil_mode: bool) -> torch.Tensor:
    axes = _axes(x, dims, kernel_size, stride, padding, dilation, ceil_mode)
    if axes is None or not x.is_floating_point() or not any(
            a.kernel_too_large or a.drops_last_window for a in axes):
        return NotImplemented
    if any(a.kernel_too_large and a.dilation != 1 for a in axes):
        return NotImplemented  # a dilated window does not clip to a smaller kernel
    return _MAX[dims](_padded(x, axes, float("-inf")), [a.clipped_kernel for a in axes],
                      [a.stride for a in axes], [0] * dims, [a.dilation for a in axes])


def _axes(x: torch.Tensor, dims: int, kernel_size: Sequence[int], stride: Sequence[int],
          padding: Sequence[int], dilation: Sequence[int],
          ceil_mode: bool) -> list[_Axis] | None:
    """The pool's spatial axes, or None when a size is symbolic."""
    sizes = tuple(x.shape[-dims:])
    if not all(isinstance(s, int) for s in sizes):
        return None
    kernel = _per_axis(kernel_size, dims)
    strides = _per_axis(stride, dims) if stride else kernel
    return [_Axis(*values, ceil_mode) for values in zip(
        sizes, kernel, strides, _per_axis(padding, dims), _per_axis(dilation, dims),
        strict=True)]


def _per_axis(values: Sequence[int] | int, dims: int) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    return values * dims if len(values) == 1 else values


def _padded(x: torch.Tensor, axes: list[_Axis], value: float) -> torch.Tensor:
    pads = []
    for axis in reversed(axes):  # F.pad lists the last axis first
        pads += [axis.padding, axis.right_padding]
    return torch.nn.functional.pad(x, pads, value=value) if any(pads) else x


def _window_scale(axis: _Axis, count_include_pad: bool, like: torch.Tensor
                  ) -> torch.Tensor | None:
    """Per output position along `axis`: clipped kernel / PyTorch's divisor (its window
    clipped to input + padding, or to the input without count_include_pad); None when that is
    1 everywhere."""
    kernel, high = axis.clipped_kernel, axis.size + axis.padding
    last_end = (axis.outputs - 1) * axis.stride - axis.padding + kernel
    if not (last_end > high if count_include_pad else axis.padding or last_end > axis.size):
        return None
    start = torch.arange(axis.outputs, device=like.device) * axis.stride - axis.padding
    end = (start + kernel).clamp(max=high if count_include_pad else axis.size)
    length = end - (start if count_include_pad else start.clamp(min=0))
    return kernel / length.to(like.dtype)


def table() -> dict[OpOverload, Callable]:
    """This module's entries of the decomposition table."""
    return {**{op: fn for op, fn in zip(_AVG.values(), (avg_pool1d, avg_pool2d, avg_pool3d),
                                         strict=True)},
            **{op: fn for op, fn in zip(_MAX.values(), (max_pool1d, max_pool2d, max_pool3d),
                                         strict=True)}}
