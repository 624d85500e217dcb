"""deform_conv2d (DCNv1 / DCNv2): deformable convolution as a torch op that exports and converts.

`deform_conv2d` has `torchvision.ops.deform_conv2d`'s signature and semantics; the op is
`torch.ops.dynexport.deform_conv2d`, which also carries groups and offset_groups as ints
(read from the shapes by `deform_conv2d`). For output position (oh, ow), kernel tap k = i·kw + j
and offset group g, the sample is taken at

    y = oh·stride_h − pad_h + i·dilation_h + offset[b, 2·(g·K + k),     oh, ow]
    x = ow·stride_w − pad_w + j·dilation_w + offset[b, 2·(g·K + k) + 1, oh, ow]

(K = kh·kw, so the offset channels are (dy, dx) pairs, tap-major within each offset group),
by bilinear interpolation where each of the four neighbours outside the image counts as
zero (a sample at y ≤ −1, y ≥ H, x ≤ −1 or x ≥ W is therefore 0), multiplied by
mask[b, g·K + k, oh, ow] when a mask is given (DCNv2, "modulated"). Input channel c belongs
to offset group c // (C / offset_groups), where offset_groups = offset.shape[1] // (2·K),
and to weight group c // weight.shape[1] as in a grouped convolution.

mmcv: `mmcv.ops.DeformConv2d` (DCNv1, `deform_conv2d(input, offset, weight, stride, padding,
dilation, groups, deform_groups)`) and `ModulatedDeformConv2d` (DCNv2,
`modulated_deform_conv2d(input, offset, mask, weight, bias, ...)`) use the same layout:
their im2col kernels (mmcv/ops/csrc/pytorch/{deform,modulated_deform}_conv_cpu.cpp) read the
offset of group g and tap (i, j) from channels 2·(i·kw + j) (dy) and 2·(i·kw + j) + 1 (dx)
of that group's 2·K-channel block, the mask from channel i·kw + j of its K-channel block,
and zero a sample outside (−1, H) × (−1, W) and each out-of-image neighbour, exactly as
torchvision does. mmcv's `groups` is the weight groups (= C / weight.shape[1]) and its
`deform_groups` the offset groups, so an mmcv call maps onto this op argument for argument;
`ModulatedDeformConv2dPack` builds its offset as cat(o1, o2) of the first two thirds of
`conv_offset`'s output and its mask as sigmoid of the last third before calling the op, so
nothing is re-ordered there either.

Formulations:

* eager kernel and decomposition (the CompositeImplicitAutograd kernel that plain
  `openvino.convert_model(ep)` / `torch.onnx.export(ep)` apply) share one aten-only body:
  four gathers of channel rows (one per bilinear neighbour, indices clamped into the image
  and the weight zeroed outside it), their weighted sum as im2col columns, and one bmm
  over the weight groups; dynamic batch, height and width export and convert;
* autograd: the backward re-runs that body under autograd (cheap to write, costs one
  forward; gradients agree with torchvision's analytic ones away from integer sample
  positions, where bilinear interpolation is not differentiable);
* ONNX translation: the standard `DeformConv` (opset 19; torch.onnx 2.13 writes opset 20
  models), which onnxruntime 1.32's CPU provider loads and computes like torchvision
  (tests/test_deform_conv.py: borders, groups, offset groups, mask, FCOS3D size);
* OpenVINO conversion: `DeformableConvolution` (opset 8) with `bilinear_interpolation_pad`
  true, the zero-outside semantics above, and the mask as its fourth input.

`torchvision::deform_conv2d` itself needs nothing from this module for OpenVINO: its PyTorch
frontend converts the FX target "torchvision.deform_conv2d.default" natively, to the same
`DeformableConvolution` with `bilinear_interpolation_pad` true.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dynexport.custom_ops.registry import register

__all__ = ["deform_conv2d"]

# groups and offset_groups follow from the shapes; the op carries them as ints (as
# torchvision::deform_conv2d does) because OpenVINO's DeformableConvolution needs them as
# attributes at conversion time, when the input's channel count may still be unknown.
_SCHEMA = ("(Tensor input, Tensor offset, Tensor weight, Tensor? bias, int[2] stride, "
           "int[2] padding, int[2] dilation, Tensor? mask, int groups, int offset_groups) "
           "-> Tensor")


def _pair(name: str, value: int | Sequence[int], minimum: int) -> list[int]:
    if isinstance(value, bool):
        raise TypeError(f"deform_conv2d: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = [value, value]
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        pair = list(value)
    else:
        raise TypeError(f"deform_conv2d: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"deform_conv2d: {name} must be >= {minimum}, got {tuple(pair)}")
    return pair


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                  stride: int | tuple[int, int] = (1, 1), padding: int | tuple[int, int] = (0, 0),
                  dilation: int | tuple[int, int] = (1, 1), mask: Tensor | None = None) -> Tensor:
    """Deformable convolution v1 (mask=None) or v2 (modulated), as torchvision's.

    input (B, C, H, W); offset (B, 2·offset_groups·kh·kw, oH, oW), (dy, dx) pairs;
    weight (O, C / groups, kh, kw); bias (O,) or None; mask (B, offset_groups·kh·kw, oH, oW)
    or None; stride, padding, dilation an int or an (h, w) pair. All tensors share one
    floating dtype. Returns (B, O, oH, oW). Wrong ranks, sizes or dtypes raise
    TypeError/ValueError naming the argument.
    """
    _check_ranks(input, offset, weight, mask)
    taps = weight.shape[2] * weight.shape[3]
    groups = input.shape[1] // weight.shape[1] if weight.shape[1] else 0
    offset_groups = offset.shape[1] // (2 * taps) if taps else 0
    return torch.ops.dynexport.deform_conv2d.default(
        input, offset, weight, bias, _pair("stride", stride, 1), _pair("padding", padding, 0),
        _pair("dilation", dilation, 1), mask, groups, offset_groups)


# --- argument checks -----------------------------------------------------------------------------

def _output_size(size, pad: int, dilation: int, kernel, stride: int):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _check_ranks(input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None) -> None:
    layouts = {"input": (input, "(B, C, H, W)"), "offset": (offset, "(B, 2·G·kh·kw, oH, oW)"),
               "weight": (weight, "(O, C / groups, kh, kw)"),
               "mask": (mask, "(B, G·kh·kw, oH, oW)")}
    for name, (t, layout) in layouts.items():
        if t is not None and t.dim() != 4:
            raise ValueError(f"deform_conv2d: {name} must be 4-D {layout}, "
                             f"got shape {tuple(t.shape)}")


def _check_args(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                mask: Tensor | None, groups: int, offset_groups: int) -> tuple:
    """Dtypes, ranks and sizes; returns (oH, oW). Symbolic sizes become export-time guards."""
    for name, values, minimum in (("stride", stride, 1), ("padding", padding, 0),
                                  ("dilation", dilation, 1)):
        if len(values) != 2 or min(values) < minimum:
            raise ValueError(f"deform_conv2d: {name} must be a pair of ints >= {minimum}, "
                             f"got {tuple(values)}")
    if not input.dtype.is_floating_point:
        raise TypeError(f"deform_conv2d: input must be a floating tensor, got {input.dtype}")
    named = {"offset": offset, "weight": weight, "bias": bias, "mask": mask}
    for name, t in named.items():
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"deform_conv2d: {name} must have input's dtype {input.dtype}, "
                            f"got {t.dtype}")
    _check_ranks(input, offset, weight, mask)
    b, c, h, w = input.shape
    out_c, cin_g, kh, kw = weight.shape
    taps = kh * kw

    def check(condition, message: str) -> None:
        torch._check_with(ValueError, condition, lambda: f"deform_conv2d: {message}")

    check(cin_g > 0 and taps > 0, f"weight {tuple(weight.shape)} must have non-zero sizes")
    check(groups >= 1 and cin_g * groups == c,
          f"weight: input channels {c} must be groups {groups} × weight.shape[1] {cin_g}")
    check(out_c % groups == 0, f"weight: {out_c} output channels are not divisible by the "
                               f"{groups} groups (input channels {c} / weight.shape[1] {cin_g})")
    if bias is not None:
        check(bias.dim() == 1 and bias.shape[0] == out_c,
              f"bias must be ({out_c},), got shape {tuple(bias.shape)}")
    check(offset_groups >= 1 and offset.shape[1] == 2 * taps * offset_groups,
          f"offset: {offset.shape[1]} channels must be 2·kh·kw = {2 * taps} × offset_groups "
          f"{offset_groups}")
    check(c % offset_groups == 0, f"offset: input channels {c} are not divisible by the "
                                  f"{offset_groups} offset groups")
    oh = _output_size(h, padding[0], dilation[0], kh, stride[0])
    ow = _output_size(w, padding[1], dilation[1], kw, stride[1])
    check(oh > 0 and ow > 0, f"input {tuple(input.shape)} is too small for kernel {(kh, kw)} "
                             f"with padding {tuple(padding)}, dilation {tuple(dilation)}")
    check(offset.shape[0] == b, f"offset batch {offset.shape[0]} must equal input batch {b}")
    check(offset.shape[2] == oh and offset.shape[3] == ow,
          f"offset spatial size {tuple(offset.shape[2:])} must equal the output size "
          f"{(oh, ow)}")
    if mask is not None:
        check(mask.shape[0] == b, f"mask batch {mask.shape[0]} must equal input batch {b}")
        check(mask.shape[1] == offset_groups * taps,
              f"mask must have offset_groups·kh·kw = {offset_groups * taps} channels, "
              f"got {mask.shape[1]}")
        check(mask.shape[2] == oh and mask.shape[3] == ow,
              f"mask spatial size {tuple(mask.shape[2:])} must equal the output size "
              f"{(oh, ow)}")
    return oh, ow


# --- the computation (aten only: eager kernel, autograd and decomposition) -----------------------

def _compute(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
             stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
             mask: Tensor | None, groups: int, offset_groups: int) -> Tensor:
    oh, ow = _check_args(input, offset, weight, bias, stride, padding, dilation, mask, groups,
                         offset_groups)
    b, c, h, w = input.shape
    out_c, cin_g, kh, kw = weight.shape
    taps, cells, cg = kh * kw, oh * ow, c // offset_groups
    dtype, device = input.dtype, input.device
    # Sample positions (B, G, K, oH·oW): the regular grid plus the learnt offsets.
    tap_y = (torch.arange(kh, device=device) * dilation[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=device) * dilation[1]).repeat(kh)
    out_y = torch.arange(oh, device=device) * stride[0] - padding[0]
    out_x = torch.arange(ow, device=device) * stride[1] - padding[1]
    grid_y = (tap_y.view(taps, 1, 1) + out_y.view(1, oh, 1)).expand(taps, oh, ow)
    grid_x = (tap_x.view(taps, 1, 1) + out_x.view(1, 1, ow)).expand(taps, oh, ow)
    pairs = offset.reshape(b, offset_groups, taps, 2, cells)
    y = pairs[:, :, :, 0] + grid_y.reshape(taps, cells).to(dtype)
    x = pairs[:, :, :, 1] + grid_x.reshape(taps, cells).to(dtype)
    y_low, x_low = torch.floor(y), torch.floor(x)
    frac_y, frac_x = y - y_low, x - x_low
    y_low, x_low = y_low.to(torch.int64), x_low.to(torch.int64)
    modulation = None if mask is None else mask.reshape(b, offset_groups, taps, cells)
    # One row of cg channels per (batch, offset group, pixel); row index of pixel (0, 0):
    rows = input.reshape(b, offset_groups, cg, h * w).transpose(2, 3).reshape(-1, cg)
    first_row = (torch.arange(b * offset_groups, device=device) * (h * w)).view(
        b, offset_groups, 1, 1)
    columns = None
    for step_y, weight_y in ((0, 1 - frac_y), (1, frac_y)):
        yy = y_low + step_y
        inside_y = (yy >= 0) & (yy < h)
        for step_x, weight_x in ((0, 1 - frac_x), (1, frac_x)):
            xx = x_low + step_x
            inside = inside_y & (xx >= 0) & (xx < w)
            corner = weight_y * weight_x * inside.to(dtype)
            if modulation is not None:
                corner = corner * modulation
            index = first_row + yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)
            values = rows.index_select(0, index.reshape(-1)).view(
                b, offset_groups, taps, cells, cg) * corner.unsqueeze(-1)
            columns = values if columns is None else columns + values
    # (B, G, K, L, cg) -> (groups, B·L, C/groups·K), channel-major like weight's (cin, kh, kw).
    # bmm, not a broadcasting matmul: torch's matmul decomposition specialises a batch of 1
    # (measured: an export with example batch 1 then failed at batch 3 in OpenVINO).
    columns = columns.permute(0, 3, 1, 4, 2).reshape(b * cells, groups, cin_g * taps)
    kernel = weight.reshape(groups, out_c // groups, cin_g * taps).transpose(1, 2)
    out = torch.bmm(columns.transpose(0, 1), kernel)  # (groups, B·L, O/groups)
    out = out.view(groups, b, cells, out_c // groups).permute(1, 0, 3, 2).reshape(
        b, out_c, oh, ow)
    if bias is not None:
        out = out + bias.view(1, out_c, 1, 1)
    return out


# --- the op: kernel, fake kernel, autograd -------------------------------------------------------

# No device_types (see README.md): a CPU-only kernel makes run_decompositions skip the
# decomposition.
@torch.library.custom_op("dynexport::deform_conv2d", mutates_args=(), schema=_SCHEMA)
def _deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
                   stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   mask: Tensor | None, groups: int, offset_groups: int) -> Tensor:
    return _compute(input, offset, weight, bias, stride, padding, dilation, mask, groups,
                    offset_groups)


@_deform_conv2d.register_fake
def _deform_conv2d_fake(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
                        stride: Sequence[int], padding: Sequence[int],
                        dilation: Sequence[int], mask: Tensor | None, groups: int,
                        offset_groups: int) -> Tensor:
    oh, ow = _check_args(input, offset, weight, bias, stride, padding, dilation, mask, groups,
                         offset_groups)
    return input.new_empty((input.shape[0], weight.shape[0], oh, ow))


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    input, offset, weight, bias, stride, padding, dilation, mask, groups, offset_groups = inputs
    ctx.save_for_backward(input, offset, weight, bias, mask)
    ctx.geometry = (stride, padding, dilation)
    ctx.groups = (groups, offset_groups)


def _backward(ctx, grad: Tensor) -> tuple:
    """Autograd through the aten body, re-run once: one extra forward per backward."""
    saved = ctx.saved_tensors
    wanted = [i for i, t in zip((0, 1, 2, 3, 7), saved, strict=True)
              if t is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(t.dtype.is_floating_point)
                  for t in saved]
        input, offset, weight, bias, mask = leaves
        out = _compute(input, offset, weight, bias, *ctx.geometry, mask, *ctx.groups)
        position = {0: 0, 1: 1, 2: 2, 3: 3, 7: 4}
        grads = torch.autograd.grad(out, [leaves[position[i]] for i in wanted], grad,
                                    allow_unused=True)
    result: list[Tensor | None] = [None] * 10
    for i, g in zip(wanted, grads, strict=True):
        result[i] = g
    return tuple(result)


_deform_conv2d.register_autograd(_backward, setup_context=_setup_context)


def _decomposition(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
                   stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   mask: Tensor | None, groups: int, offset_groups: int) -> Tensor:
    """Portable aten ops (index_select → Gather, matmul → MatMul): what plain exports use."""
    return _compute(input, offset, weight, bias, stride, padding, dilation, mask, groups,
                    offset_groups)


# --- ONNX translation (onnxscript, standard DeformConv) ------------------------------------------

def _onnx(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
          mask=None, groups: int = 1, offset_groups: int = 1):
    """onnx `DeformConv` (opset 19): torchvision's semantics, computed by onnxruntime's CPU
    provider."""
    from onnxscript import opset19 as op

    return op.DeformConv(input, weight, offset, bias, mask,
                         dilations=list(dilation), group=groups, offset_group=offset_groups,
                         pads=[padding[0], padding[1], padding[0], padding[1]],
                         strides=list(stride))


# --- OpenVINO conversion -------------------------------------------------------------------------

def _is_none(context, index: int) -> bool:
    """True if the op's argument `index` is None. The Python NodeContext has no
    input_is_none; a None argument arrives as an input-less framework node whose constant
    value reads back as None (reading a non-constant input as a constant raises instead)."""
    node = context.get_input(index).get_node()
    return (node.get_type_name() == "PtFrameworkNode" and node.get_input_size() == 0
            and context.get_values_from_const_input(index) is None)


def _openvino(context) -> list:
    """DeformableConvolution-8 with bilinear_interpolation_pad (zero-padded bilinear
    sampling, torchvision's border rule), the mask as its fourth input, bias added."""
    import openvino.opset8 as ops

    input, offset, weight = (context.get_input(i) for i in range(3))
    stride, padding, dilation = (list(context.get_values_from_const_input(i)) for i in (4, 5, 6))
    groups, offset_groups = (context.get_values_from_const_input(i) for i in (8, 9))
    out = ops.deformable_convolution(input, offset, weight, stride, padding, padding, dilation,
                                     mask=None if _is_none(context, 7) else context.get_input(7),
                                     group=groups, deformable_group=offset_groups,
                                     bilinear_interpolation_pad=True)
    if not _is_none(context, 3):
        out = ops.add(out, ops.reshape(context.get_input(3), [1, -1, 1, 1], False))
    return [out.output(0)]


DEFORM_CONV2D = register(_deform_conv2d, decomposition=_decomposition, onnx=_onnx,
                         openvino=_openvino)
