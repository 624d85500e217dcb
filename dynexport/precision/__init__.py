"""Precision stage (`--precision`): the OpenVINO model at a lower precision, compared with the
f32 model that verification pinned.

* `f32`: nothing to do; what verification checked is what ships.
* `bf16`: the same IR compiled with OpenVINO's `INFERENCE_PRECISION_HINT=bf16` (the CPU
  plugin's own default where the CPU has avx512_bf16 or AMX; elsewhere it falls back to f32,
  and `inference_precision` says so).
* `int8`: NNCF post-training quantisation of the IR, written to `openvino_int8/model.xml`; the
  layers left in floating point run at f32. With the script's validation data and metric,
  `nncf.quantize_with_accuracy_control`: the layers whose quantisation costs more than
  `--accuracy-budget` points of the metric (against the f32 IR) are reverted to floating
  point, and `accuracy_control` records NNCF's metrics and which layers it reverted; without
  them, `nncf.quantize` on the calibration inputs.
* `f16`: the f32 IR compiled with `INFERENCE_PRECISION_HINT=f16` (what Intel GPU and NPU
  compute in). A device whose `OPTIMIZATION_CAPABILITIES` lack FP16 (e.g. a CPU without
  avx512_fp16) computes bf16 or f32 instead: `inference_precision` says which and `note` says
  plainly that these are not f16 numbers.
* `auto`: bf16, f16 and int8 made, timed and scored with the script's metric on its
  validation data; the fastest within `--accuracy-budget` of eager f32 ships (`_choose`).
* `fp16-weights`: the IR with its weights stored as f16 (`compress_to_fp16=True`), written to
  `openvino_fp16/model.xml`, computed at f32.

Each is timed against the f32 model and compared with it on the example and the probe: the
largest absolute difference per output and, for labels, the share that agree.

Index math: values that become integers inside the graph (FlashOcc's voxel coordinates, a
pivot search) must not be rounded: at 8 bits a point 40 m out moves by a BEV cell or more.
int8 quantisation skips those layers (`index_math_layers`). The bf16 hint cannot be told to:
OpenVINO's CPU plugin drops the `DisablePrecisionConversion` marks that would keep them f32
when its own passes rebuild the nodes. What it does keep in f32 is a graph's tail: the nodes
between the Results and the nearest MatMul, convolution, RNN, ROIPooling or Interpolate. A
model keeps its index math f32 under bf16 by computing it elementwise (no MatMul) and returning
it as an output: FlashOcc's `point_cells` does (docs/flashocc.md: no point changes cell).
"""

from dynexport.precision.index_math import index_math_layers
from dynexport.precision.records import (
    AccuracyControl,
    AccuracyControlResult,
    Candidate,
    PrecisionError,
    PrecisionResult,
    VariantComparison,
)
from dynexport.precision.variants import (
    apply_precision,
    device_capabilities,
    f16_note,
    variant_ir,
)

__all__ = ["AccuracyControl", "AccuracyControlResult",
           "Candidate", "PrecisionError", "PrecisionResult", "VariantComparison",
           "apply_precision", "device_capabilities", "f16_note", "index_math_layers",
           "variant_ir"]
