"""A stand-in for mmcv's compiled ops (`mmcv._ext`), which mmcv-lite does not ship.

mmcv.ops loads `mmcv._ext` when imported, and mmdet and mmdet3d import mmcv.ops, so under
mmcv-lite no OpenMMLab detector even imports. `install()` puts a module in its place whose
every function exists (mmcv checks them at import) and raises `MmcvOpUnavailable` when
called, naming the op and the mmcv line that called it.

The deformable convolutions (DCN, DCNv2) are routed through torch.library ops of the
`mmcv_standin` namespace instead. Their fake kernels give the output shape, so a model with
DCN is captured, and as no backend has a translation for them, the conversion reports
`mmcv_standin.deform_conv2d` / `mmcv_standin.modulated_deform_conv2d` as unsupported ops at
the mmcv line that calls them. Their real kernels raise `MmcvOpUnavailable`: there is no
CPU implementation to run.
"""

import importlib
import os
import sys
import types
from collections.abc import Sequence

import torch
from torch import Tensor

NAMESPACE = "mmcv_standin"
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
            "not use the op (e.g. plain convolutions instead of DCN), keep the code that calls "
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
    """Make mmcv.ops importable under mmcv-lite and route DCN through the `mmcv_standin` ops.

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


# --- the deformable convolutions as torch ops -----------------------------------------------

def _pair(value: int | Sequence[int]) -> list[int]:
    return [int(v) for v in value] if isinstance(value, Sequence) else [int(value)] * 2


def _output_shape(input: Tensor, weight: Tensor, stride: list[int], padding: list[int],
                  dilation: list[int]) -> list:
    # mmcv's DeformConv2dFunction._output_size: a convolution's output size.
    size = [input.shape[0], weight.shape[0]]
    for d in range(2):
        kernel = dilation[d] * (weight.shape[d + 2] - 1) + 1
        size.append((input.shape[d + 2] + 2 * padding[d] - kernel) // stride[d] + 1)
    return size


@torch.library.custom_op(f"{NAMESPACE}::deform_conv2d", mutates_args=(),
                         schema="(Tensor input, Tensor offset, Tensor weight, int[] stride, "
                                "int[] padding, int[] dilation, int groups, int deform_groups)"
                                " -> Tensor")
def _deform_conv2d(input, offset, weight, stride, padding, dilation, groups, deform_groups):
    raise MmcvOpUnavailable("deform_conv_forward", _caller())


@_deform_conv2d.register_fake
def _(input, offset, weight, stride, padding, dilation, groups, deform_groups):
    return input.new_empty(_output_shape(input, weight, stride, padding, dilation))


@torch.library.custom_op(f"{NAMESPACE}::modulated_deform_conv2d", mutates_args=(),
                         schema="(Tensor input, Tensor offset, Tensor mask, Tensor weight, "
                                "Tensor? bias, int[] stride, int[] padding, int[] dilation, "
                                "int groups, int deform_groups) -> Tensor")
def _modulated_deform_conv2d(input, offset, mask, weight, bias, stride, padding, dilation,
                             groups, deform_groups):
    raise MmcvOpUnavailable("modulated_deform_conv_forward", _caller())


@_modulated_deform_conv2d.register_fake
def _(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    return input.new_empty(_output_shape(input, weight, stride, padding, dilation))


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor,
                  stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                  dilation: int | Sequence[int] = 1, groups: int = 1, deform_groups: int = 1,
                  bias: bool = False, im2col_step: int = 32) -> Tensor:
    """mmcv.ops.deform_conv2d's signature, as `torch.ops.mmcv_standin.deform_conv2d`
    (`im2col_step` only tiles mmcv's CUDA kernel)."""
    if bias:
        raise ValueError("mmcv's deform_conv2d supports bias=False only")
    return torch.ops.mmcv_standin.deform_conv2d(
        input, offset, weight, _pair(stride), _pair(padding), _pair(dilation), groups,
        deform_groups)


def modulated_deform_conv2d(input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor,
                            bias: Tensor | None = None, stride: int | Sequence[int] = 1,
                            padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                            groups: int = 1, deform_groups: int = 1) -> Tensor:
    """mmcv.ops.modulated_deform_conv2d's signature, as
    `torch.ops.mmcv_standin.modulated_deform_conv2d`."""
    return torch.ops.mmcv_standin.modulated_deform_conv2d(
        input, offset, mask, weight, bias, _pair(stride), _pair(padding), _pair(dilation),
        groups, deform_groups)
