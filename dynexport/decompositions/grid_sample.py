"""5-D grid_sample (volumetric: trilinear and nearest) as gathers and arithmetic.

`torch.export` keeps `F.grid_sample` as `aten.grid_sampler.default`; a consumer's default
decompositions turn the 5-D case into `aten.grid_sampler_3d.default`, for which OpenVINO's
PyTorch frontend has no conversion rule (OpenVINO 2026.4: "No conversion rule found for
operations: aten.grid_sampler_3d.default"). torch.onnx exports it as ONNX GridSample
(opset 20 allows N-D), which onnxruntime 1.32 runs; see docs/decompositions.md.

Here the 5-D case becomes: unnormalise the grid to voxel coordinates (align_corners as
torch does it), clip to the volume for padding "border", take the 8 trilinear taps (or the
nearest voxel, ties to even as torch's nearbyint), read all of them with one `index_select`
from the input laid out as (N·D·H·W, C), and add them up weighted; taps outside the volume
get weight 0 (padding "zeros"). Every backend has these ops.

Handled: 5-D float32/float64 input with static D, H, W (batch, channels and the output
grid may be dynamic), mode bilinear (0) or nearest (1), padding zeros (0) or border (1),
either align_corners. Declined (NotImplemented, the op stays for the coverage report):
4-D grid_sample (both backends convert it natively), bicubic, reflection, symbolic
spatial sizes, other dtypes.

`linear_taps` is shared with the multi-scale deformable attention decomposition
(dynexport/custom_ops/ms_deform_attn.py), whose sizes are tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dynexport.adapters.torch_export import OpOverload

__all__ = ["grid_sampler", "grid_sampler_3d", "linear_taps", "table"]

_BILINEAR, _NEAREST = 0, 1
_ZEROS, _BORDER = 0, 1
_DTYPES = (torch.float32, torch.float64)


# The fix a report gives where a backend fails on these ops: this module declined the call.
DECLINED = ("dynexport decomposes 5-D grid_sample only for float32/float64 input with static "
            "D, H, W, mode bilinear or nearest and padding zeros or border: keep D, H, W "
            "static and use those modes, or sample 2-D slices (4-D grid_sample converts as it "
            "is)")


def _clip(t: Tensor, low: float | int, high: Tensor | int | float) -> Tensor:
    """t clamped to [low, high]; high may be a tensor broadcasting against t."""
    t = t.clamp(min=low)
    return torch.minimum(t, high.to(t.dtype)) if isinstance(high, Tensor) else t.clamp(max=high)


def linear_taps(coord: Tensor, size: Tensor | int) -> list[tuple[Tensor, Tensor]]:
    """The two linear-interpolation taps of pixel coordinate `coord` on an axis of `size`
    pixels (pixel i is centred at i): [(index, weight), (index + 1, weight)], indices int64
    clamped into [0, size - 1] so that they can always be gathered, and the weight of a tap
    outside [0, size) set to 0 ("zeros" padding). `size` is an int or an integer tensor
    broadcasting against `coord`."""
    # Far outside, every tap is out of range anyway; clipping first keeps the int64
    # conversion defined for huge coordinates.
    coord = _clip(coord, -2, size + 1)
    low = torch.floor(coord)
    frac = coord - low
    low = low.to(torch.int64)
    taps = []
    for index, weight in ((low, 1 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < size)
        taps.append((_clip(index, 0, size - 1), torch.where(inside, weight, 0)))
    return taps


def _nearest_tap(coord: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    """The nearest pixel (round half to even, as torch's nearbyint) with weight 1, or 0
    outside."""
    index = torch.round(_clip(coord, -2, size + 1)).to(torch.int64)
    inside = (index >= 0) & (index < size)
    return [(_clip(index, 0, size - 1), inside.to(coord.dtype))]


def _unnormalize(g: Tensor, size: int, align_corners: bool, padding_mode: int) -> Tensor:
    """torch's grid_sampler_compute_source_index for padding zeros/border."""
    if align_corners:
        coord = (g + 1) * ((size - 1) / 2)
    else:
        coord = ((g + 1) * size - 1) / 2
    if padding_mode == _BORDER:
        coord = _clip(coord, 0, size - 1)
    return coord


def grid_sampler_3d(input: Tensor, grid: Tensor, interpolation_mode: int, padding_mode: int,
                    align_corners: bool) -> Tensor:
    """aten.grid_sampler_3d: input (N, C, D, H, W), grid (N, Do, Ho, Wo, 3) holding (x, y, z)
    in [-1, 1] → (N, C, Do, Ho, Wo)."""
    if (input.dim() != 5 or input.dtype not in _DTYPES or grid.dtype != input.dtype
            or interpolation_mode not in (_BILINEAR, _NEAREST)
            or padding_mode not in (_ZEROS, _BORDER)
            or not all(isinstance(s, int) for s in input.shape[2:])):
        return NotImplemented
    n, c, d, h, w = input.shape
    out_shape = grid.shape[1:4]
    sizes = (w, h, d)  # grid[..., 0] is x (along W), 1 is y (H), 2 is z (D)
    axes = []
    for k, size in enumerate(sizes):
        coord = _unnormalize(grid[..., k].reshape(grid.shape[0], -1), size, align_corners,
                             padding_mode)
        axes.append(linear_taps(coord, size) if interpolation_mode == _BILINEAR
                    else _nearest_tap(coord, size))
    # Voxel (b, z, y, x) is row ((b·D + z)·H + y)·W + x of the (N·D·H·W, C) table.
    batch = torch.arange(grid.shape[0], device=grid.device).unsqueeze(1) * (d * h * w)
    indices, weights = [], []
    for ix, wx in axes[0]:
        for iy, wy in axes[1]:
            for iz, wz in axes[2]:
                indices.append(batch + (iz * h + iy) * w + ix)
                weights.append(wx * wy * wz)
    table = input.permute(0, 2, 3, 4, 1).reshape(-1, c)
    index = torch.stack(indices)  # (taps, N, P)
    values = table.index_select(0, index.reshape(-1)).view(*index.shape, c)
    out = (values * torch.stack(weights).unsqueeze(-1)).sum(0)  # (N, P, C)
    return out.view(n, *out_shape, c).permute(0, 4, 1, 2, 3).contiguous()


def grid_sampler(input: Tensor, grid: Tensor, interpolation_mode: int, padding_mode: int,
                 align_corners: bool) -> Tensor:
    """aten.grid_sampler (what torch.export keeps): the 5-D case; 4-D stays as it is."""
    if input.dim() != 5:
        return NotImplemented
    return grid_sampler_3d(input, grid, interpolation_mode, padding_mode, align_corners)


def table() -> dict[OpOverload, Callable]:
    """This module's entries of the decomposition table."""
    aten = torch.ops.aten
    return {aten.grid_sampler.default: grid_sampler,
            aten.grid_sampler_3d.default: grid_sampler_3d}
