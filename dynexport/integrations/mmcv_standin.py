"""A stand-in for mmcv's compiled ops (`mmcv._ext`), which mmcv-lite does not ship.

mmcv.ops loads `mmcv._ext` when imported, and mmdet and mmdet3d import mmcv.ops, so under
mmcv-lite no OpenMMLab detector even imports. `install()` puts a module in its place whose
every function exists (mmcv checks them at import) and raises `MmcvOpUnavailable` when
called, naming the op and the mmcv line that called it.

The deformable convolutions (DCN, DCNv2: `mmcv.ops.deform_conv2d` and
`mmcv.ops.modulated_deform_conv2d`) are routed to dynexport's own op,
`dynexport.custom_ops.deform_conv.deform_conv2d` (`torch.ops.dynexport.deform_conv2d`), which
runs on the CPU, exports, and converts to onnx `DeformConv` and OpenVINO
`DeformableConvolution`. mmcv's offset and mask layout is torchvision's (see that module's
docstring), so the arguments map one to one: mmcv's `groups` are the weight groups and its
`deform_groups` the offset groups, which the op reads from the weight's and the offset's
shapes.
"""

import importlib
import os
import sys
import types
from collections.abc import Sequence

import torch
from torch import Tensor

_SKIPPED_ROOTS = tuple(
    os.path.dirname(os.path.realpath(file)) + os.sep
    for file in (torch.__file__, os.path.dirname(__file__))  # torch/, dynexport/
)


class MmcvOpUnavailable(RuntimeError):
    """A compiled mmcv op was called, and mmcv-lite has none."""

    def __init__(self, op: str, caller: str | None):
        at = f" (called at {caller})" if caller else ""
        super().__init__(
            f"mmcv's compiled op `{op}`{at} is not available: this environment has "
            "mmcv-lite, which ships no compiled ops, and dynexport stands in for mmcv._ext so "
            "that OpenMMLab models import and build. Change the config so that the model does "
            "not use the op, keep the code that calls "
            "it (post-processing such as NMS) out of the exported model, or install mmcv with "
            "compiled ops (see docs/mmdet3d.md).")


def _caller() -> str | None:
    """file:line of the innermost frame outside torch and dynexport (mmcv's call)."""
    frame = sys._getframe(1)
    while frame is not None:
        file = frame.f_code.co_filename
        if not os.path.realpath(file).startswith(_SKIPPED_ROOTS):
            return f"{file}:{frame.f_lineno}"
        frame = frame.f_back
    return None


class _StandinExt(types.ModuleType):
    """`mmcv._ext` for mmcv-lite: every function mmcv.ops asks for exists, and raises."""

    def __getattr__(self, name: str):
        if name.startswith("__"):  # module protocol (__file__, __path__, ...), not an op
            raise AttributeError(name)

        def compiled_op(*args, **kwargs):
            raise MmcvOpUnavailable(name, _caller())

        compiled_op.__name__ = compiled_op.__qualname__ = name
        return compiled_op


def has_compiled_ops() -> bool:
    """True when the real `mmcv._ext` (full mmcv) is importable."""
    if isinstance(sys.modules.get("mmcv._ext"), _StandinExt):
        return False
    try:
        importlib.import_module("mmcv._ext")
    except ImportError:
        return False
    return True


def install() -> bool:
    """Make mmcv.ops importable under mmcv-lite and route DCN to dynexport's deform_conv2d.

    Call before importing mmdet or mmdet3d models. Does nothing when mmcv has its compiled
    ops; returns True when the stand-in is in use."""
    if has_compiled_ops():
        return False
    if not isinstance(sys.modules.get("mmcv._ext"), _StandinExt):
        sys.modules["mmcv._ext"] = _StandinExt("mmcv._ext", __doc__)
    import mmcv.ops
    import mmcv.ops.deform_conv
    import mmcv.ops.modulated_deform_conv

    # mmdet and mmdet3d import these names from mmcv.ops after this point, so they get ours.
    mmcv.ops.deform_conv.deform_conv2d = mmcv.ops.deform_conv2d = deform_conv2d
    mmcv.ops.modulated_deform_conv.modulated_deform_conv2d = modulated_deform_conv2d
    mmcv.ops.modulated_deform_conv2d = modulated_deform_conv2d
    return True


# --- the deformable convolutions, on dynexport's op ----------------------------------------

def _check_groups(input: Tensor, offset: Tensor, weight: Tensor, groups: int,
                  deform_groups: int) -> None:
    """mmcv passes the group counts; the op derives them from the shapes. They must agree."""
    if weight.dim() == 4 and input.dim() == 4 and weight.shape[1] * groups != input.shape[1]:
        raise ValueError(f"deform_conv2d: groups={groups} does not match input channels "
                         f"{input.shape[1]} / weight.shape[1] {weight.shape[1]}")
    taps = weight.shape[2] * weight.shape[3] if weight.dim() == 4 else 0
    if offset.dim() == 4 and taps and offset.shape[1] != 2 * taps * deform_groups:
        raise ValueError(f"deform_conv2d: deform_groups={deform_groups} does not match offset "
                         f"channels {offset.shape[1]} = 2·kh·kw·deform_groups")


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * 2


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor,
                  stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                  dilation: int | Sequence[int] = 1, groups: int = 1, deform_groups: int = 1,
                  bias: bool = False, im2col_step: int = 32) -> Tensor:
    """mmcv.ops.deform_conv2d's signature (DCNv1) on `torch.ops.dynexport.deform_conv2d`
    (`im2col_step` only tiles mmcv's CUDA kernel)."""
    from dynexport.custom_ops.deform_conv import deform_conv2d as dcn

    if bias:
        raise ValueError("mmcv's deform_conv2d supports bias=False only")
    _check_groups(input, offset, weight, groups, deform_groups)
    return dcn(input, offset.type_as(input), weight.type_as(input), None, _pair(stride),
               _pair(padding), _pair(dilation))


def modulated_deform_conv2d(input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor,
                            bias: Tensor | None = None, stride: int | Sequence[int] = 1,
                            padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                            groups: int = 1, deform_groups: int = 1) -> Tensor:
    """mmcv.ops.modulated_deform_conv2d's signature (DCNv2) on
    `torch.ops.dynexport.deform_conv2d`."""
    from dynexport.custom_ops.deform_conv import deform_conv2d as dcn

    _check_groups(input, offset, weight, groups, deform_groups)
    return dcn(input, offset.type_as(input), weight.type_as(input),
               None if bias is None else bias.type_as(input), _pair(stride), _pair(padding),
               _pair(dilation), mask.type_as(input))
