"""nms and batched_nms with torchvision.ops' signatures and semantics, as an op that exports.

One op, `torch.ops.dynexport.nms`, with everything side by side:

* CPU kernel: torchvision's greedy NMS. Boxes are (x1, y1, x2, y2); the IoU has no +1;
  a box is suppressed when its IoU with a kept, higher-scoring box is > iou_threshold
  (compared in float64, as torchvision's kernel compares against a double); equal scores
  keep index order (a stable sort), so the lower index wins; the result is int64 indices in
  decreasing score order;
* fake kernel: the number of kept boxes is data dependent, a fresh unbacked size
  (`get_ctx().new_dynamic_size()`), so `boxes[keep]` exports with a dynamic length;
* no decomposition: greedy suppression is a loop whose trip count and state depend on the
  data, which no finite composition of portable aten ops expresses (without `while_loop`,
  which neither exporter lowers). Plain `torch.onnx.export(ep)` and `openvino.convert_model(ep)`
  therefore need the translations below, which `dynexport.to_onnx` / `to_openvino` pass;
* ONNX translation: the standard `NonMaxSuppression` (boxes (1, N, 4), scores (1, 1, N),
  corner boxes, max_output_boxes_per_class = N, no score threshold), column 2 of its output;
* OpenVINO conversion: `NonMaxSuppression`-9 (corner boxes, results sorted by score, i64
  indices, score threshold -inf), its padded output sliced to the valid count.

Both runtimes break score ties by the lower index (as torch's stable CPU sort) and compute
the IoU without +1; onnxruntime suppresses at IoU > t, OpenVINO at IoU >= t. The translations
pass each runtime the float32 threshold that makes its comparison equal to torchvision's
float64 `IoU > t` on float32 IoUs (see `_float32_thresholds`). Differences that remain:

* both runtimes compute in float32 (float64 and float16 boxes are cast);
* "flipped" boxes (x2 < x1 or y2 < y1, outside torchvision's contract) are normalised by
  both runtimes, not by torchvision;
* OpenVINO's FX decoder hands the threshold over as float32; the float64 value is taken to
  be the shortest decimal that rounds to it (0.7 for 0.7, 0.33333334 for 1/3), which matters
  only for an IoU exactly at the threshold;
* a negative iou_threshold (torchvision: all but the best box suppressed) is rejected:
  ONNX's NonMaxSuppression cannot express it and onnxruntime refuses it.

`batched_nms` is torchvision's coordinate-offset trick written with aten ops around `nms`,
so it needs no op of its own and exports, converts and runs wherever `nms` does.
"""

import math

import numpy as np
import torch
from torch import Tensor

from dynexport.custom_ops.registry import register

__all__ = ["batched_nms", "nms", "register_torchvision_nms"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision.ops.nms: greedy non-maximum suppression by IoU.

    boxes (N, 4) as (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2; scores (N,), the same
    floating dtype; iou_threshold >= 0: a box whose IoU with a kept, higher-scoring box is
    > iou_threshold is discarded. Returns the int64 indices of the kept boxes in decreasing
    score order (equal scores: lower index first). Its length depends on the data.
    """
    _check_threshold(iou_threshold)
    return torch.ops.dynexport.nms.default(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision.ops.batched_nms: `nms` within each category of `idxs`, never across.

    idxs (N,) integer categories. Returns the int64 indices of the kept boxes in decreasing
    score order. Each category's boxes are shifted by category × (coordinate span + 1)
    so that boxes of different categories never overlap, then `nms` runs once (torchvision's
    coordinate trick). The shift costs float precision: IoUs are computed on coordinates as
    large as categories × span, a relative error ~ categories × span / box size × 6e-8.
    """
    _check_threshold(iou_threshold)
    _check_args(boxes, scores)
    if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
        raise TypeError(f"batched_nms: idxs must be an integer tensor, got {idxs.dtype}")
    if idxs.dim() != 1:
        raise ValueError(f"batched_nms: idxs must be 1-D (N,), got shape {tuple(idxs.shape)}")
    _check_length("batched_nms", "idxs", idxs, boxes)
    # The span of all coordinates, with a 0 appended so that an empty input needs no branch
    # (a branch on N would specialise an exported dynamic N).
    # Category 0 keeps its coordinates exactly, as in torchvision.
    flat = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)])
    offsets = idxs.to(boxes.dtype) * (flat.amax(0) - flat.amin(0) + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# --- argument checks -----------------------------------------------------------------------------

def _check_threshold(iou_threshold: float) -> None:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)):
        raise TypeError(f"nms: iou_threshold must be a float, got {type(iou_threshold).__name__}")
    if math.isnan(iou_threshold) or iou_threshold < 0:
        # torchvision would suppress every box but the best at a negative threshold; the ONNX
        # NonMaxSuppression cannot express that (onnxruntime rejects it).
        raise ValueError(f"nms: iou_threshold must be a number >= 0, got {iou_threshold}")


def _check_args(boxes: Tensor, scores: Tensor) -> None:
    """Dtypes, ranks and sizes; a symbolic N becomes an export-time guard."""
    if boxes.dtype not in _FLOATS:
        raise TypeError(f"nms: boxes must be a floating-point tensor, got {boxes.dtype}")
    if scores.dtype != boxes.dtype:
        raise TypeError(f"nms: scores must have the dtype of boxes ({boxes.dtype}), "
                        f"got {scores.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms: boxes must be (N, 4) as (x1, y1, x2, y2), "
                         f"got shape {tuple(boxes.shape)}")
    if scores.dim() != 1:
        raise ValueError(f"nms: scores must be 1-D (N,), got shape {tuple(scores.shape)}")
    _check_length("nms", "scores", scores, boxes)


def _check_length(function: str, name: str, t: Tensor, boxes: Tensor) -> None:
    """One entry of `t` per box; with symbolic sizes an export-time check whose message
    closes over constants only (dynamo's condition for tracing it)."""
    n, m = t.shape[0], boxes.shape[0]
    if isinstance(n, int) and isinstance(m, int):
        if n != m:
            raise ValueError(f"{function}: {name} must have one entry per box, "
                             f"got {n} {name} for {m} boxes")
    else:
        torch._check_with(ValueError, n == m,
                          lambda: f"{function}: {name} must have one entry per box")


# --- the op: kernel and fake kernel --------------------------------------------------------------

def _greedy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Kept indices; the suppression of each kept box is one vectorised row."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for two empty boxes: kept
        for i in range(len(order)):
            if suppressed[i]:
                continue
            kept.append(i)
            w = np.maximum(np.minimum(x2[i], x2[i + 1:]) - np.maximum(x1[i], x1[i + 1:]), 0)
            h = np.maximum(np.minimum(y2[i], y2[i + 1:]) - np.maximum(y1[i], y1[i + 1:]), 0)
            inter = w * h
            iou = inter / (areas[i] + areas[i + 1:] - inter)
            suppressed[i + 1:] |= iou.astype(np.float64) > iou_threshold
    return order[np.array(kept, dtype=np.int64)].astype(np.int64)


# No device_types (see README.md): the kit's ops are CompositeExplicitAutograd kernels.
@torch.library.custom_op("dynexport::nms", mutates_args=(),
                         schema="(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    _check_threshold(iou_threshold)
    _check_args(boxes, scores)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # The IoUs in the boxes' own precision, as torchvision computes them (numpy has no
    # bfloat16: those go through float32, as the runtimes compute anyway).
    dtype = torch.float32 if boxes.dtype == torch.bfloat16 else boxes.dtype
    kept = _greedy(boxes.detach().to("cpu", dtype).numpy(),
                   scores.detach().to("cpu", dtype).numpy(), iou_threshold)
    return torch.from_numpy(kept).to(boxes.device)


@_nms.register_fake
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    _check_threshold(iou_threshold)
    _check_args(boxes, scores)
    kept = torch.library.get_ctx().new_dynamic_size()
    torch._check(kept <= boxes.shape[0])
    return boxes.new_empty((kept,), dtype=torch.int64)


# --- translations --------------------------------------------------------------------------------

def _float32_thresholds(iou_threshold: float) -> tuple[float, float]:
    """(strict, inclusive): float32 thresholds with, for every float32 IoU v,
    v > strict  ⇔  v >= inclusive  ⇔  v > iou_threshold (float64, torchvision's test).

    `strict` is the largest float32 <= iou_threshold (no float32 lies between them);
    `inclusive` is the next float32 above it. onnxruntime tests `>`, OpenVINO `>=`.
    A threshold >= 1 suppresses nothing (IoU <= 1); onnxruntime only accepts [0, 1].
    Exception: at threshold 0, `inclusive` is the smallest normal float32 (1.2e-38), as
    OpenVINO's CPU plugin flushes the subnormal 1e-45 to 0 (measured: it then suppressed
    disjoint boxes); an IoU in (0, 1.2e-38) is kept there instead of suppressed.
    """
    strict = np.float32(min(iou_threshold, 1.0))
    if float(strict) > iou_threshold:
        strict = np.nextafter(strict, np.float32(-np.inf))
    inclusive = max(np.nextafter(strict, np.float32(np.inf)), np.finfo(np.float32).tiny)
    return float(strict), float(inclusive)


def _onnx(boxes, scores, iou_threshold: float):
    """The standard ONNX NonMaxSuppression, one batch and one class."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    strict, _ = _float32_thresholds(iou_threshold)
    count = op.Shape(boxes, start=0, end=1)
    selected = op.NonMaxSuppression(
        op.Unsqueeze(op.Cast(boxes, to=TensorProto.FLOAT), op.Constant(value_ints=[0])),
        op.Reshape(op.Cast(scores, to=TensorProto.FLOAT), op.Constant(value_ints=[1, 1, -1])),
        count, op.Constant(value_floats=[strict]), center_point_box=0)
    # rows are (batch, class, box): the box column, in selection (= score) order
    return op.Gather(selected, op.Constant(value_int=2), axis=1)


def _onnx_torchvision(dets, scores, iou_threshold: float):
    """The same for `torchvision::nms`, whose schema calls the boxes `dets`."""
    return _onnx(dets, scores, iou_threshold)


def _openvino(context) -> list:
    """NonMaxSuppression-9, sliced to the valid rows."""
    import openvino.opset8 as ops8
    import openvino.opset9 as ops9

    def ints(*values):
        return ops8.constant(np.array(values, dtype=np.int64))

    boxes = ops8.convert(context.get_input(0), "f32")
    scores = ops8.convert(context.get_input(1), "f32")
    # OpenVINO's FX decoder turns a Python float argument into a float32 constant, so the
    # float64 threshold is gone here. The shortest decimal that rounds to that float32 is the
    # threshold as people write it (0.7, 0.45, 1/3 -> 0.33333334), which gives the same
    # comparison as torchvision's unless the threshold was itself a float32 not written so.
    rounded = np.float32(context.get_values_from_const_input(2))
    _, inclusive = _float32_thresholds(float(np.format_float_positional(rounded, unique=True)))
    count = ops8.gather(ops8.shape_of(boxes, "i64"), ints(0), ops8.constant(np.int64(0)))
    nms_node = ops9.non_max_suppression(
        # a static 4 (not unsqueeze): the CPU plugin rejects a box dimension it cannot see
        ops8.reshape(boxes, ints(1, -1, 4), False), ops8.reshape(scores, ints(1, 1, -1), False),
        count,
        ops8.constant(np.array([inclusive], dtype=np.float32)),
        ops8.constant(np.array([-np.inf], dtype=np.float32)),  # no score threshold
        box_encoding="corner", sort_result_descending=True, output_type="i64")
    column = ops8.gather(nms_node.output(0), ops8.constant(np.int64(2)),
                         ops8.constant(np.int64(1)))
    kept = ops8.slice(column, ints(0), nms_node.output(2), ints(1))
    return [kept.output(0)]


NMS = register(_nms, onnx=_onnx, openvino=_openvino)


def register_torchvision_nms() -> bool:
    """Give torchvision's own `torchvision::nms` these translations, if torchvision's ops are
    loaded (import torchvision first); returns whether the op is now registered.

    torchvision::nms has torchvision's semantics, which are this module's, so the same
    NonMaxSuppression translations apply. torch.onnx's own translation (onnxscript's
    torch_lib) passes the threshold unadjusted, which onnxruntime rejects above 1, and
    OpenVINO's PyTorch frontend has none for torch.export graphs (only for TorchScript).
    """
    from dynexport.custom_ops.registry import registered_ops

    try:
        overload = torch.ops.torchvision.nms.default
    except (AttributeError, RuntimeError):  # torchvision not imported or not loadable
        return False
    if all(record.op != overload for record in registered_ops()):
        register(overload, onnx=_onnx_torchvision, openvino=_openvino)
    return True
