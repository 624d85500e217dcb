"""Precision stage (`--precision`): the OpenVINO model at a lower precision, compared with the
f32 model that verification pinned.

* `f32`: nothing to do; what verification checked is what ships.
* `bf16`: the IR compiled with OpenVINO's `INFERENCE_PRECISION_HINT=bf16` (the CPU plugin's
  own default where the CPU has avx512_bf16 or AMX; elsewhere it may fall back to f32, and
  `inference_precision` says so: OpenVINO 2026.4 computes bf16 on any AVX-512 CPU). With
  layers to keep in f32 (below), on the CPU: a copy of the IR in bf16 element types but
  theirs, compiled with the f32 hint.
* `int8`: NNCF post-training quantisation of the IR, written to `openvino_int8/model.xml`; the
  layers left in floating point run at f32. With the script's validation data and metric,
  `nncf.quantize_with_accuracy_control`: the layers whose quantisation costs more than
  `--accuracy-budget` points of the metric (against the f32 IR) are reverted to floating
  point, and `accuracy_control` records NNCF's metrics and which layers it reverted; without
  them, `nncf.quantize` on the calibration inputs.
* `f16`: the IR compiled with `INFERENCE_PRECISION_HINT=f16` (what Intel GPU and NPU compute
  in), the same way. A device whose `OPTIMIZATION_CAPABILITIES` lack FP16 (e.g. a CPU without
  avx512_fp16) computes bf16 or f32 instead: `inference_precision` says which and `note` says
  plainly that these are not f16 numbers.
* `auto`: bf16, f16 and int8 made, timed and scored with the script's metric on its
  validation data; the fastest within `--accuracy-budget` of eager f32 ships (`_choose`).
* `fp16-weights`: the IR with its weights stored as f16 (`compress_to_fp16=True`), written to
  `openvino_fp16/model.xml`, computed at f32.

Each is timed against the f32 model and compared with it on the example and the probe: the
largest absolute difference per output and, for labels, the share that agree.

Index math: values that become integers inside the graph (FlashOcc's voxel coordinates, a
pivot search) must not be rounded: at 8 bits a point 40 m out moves by a BEV cell or more, and
under the f16 hint on an avx512_fp16 CPU too few of FlashOcc's `point_cells` agree with f32
(issue #22).
Those layers (`index_math_layers`) and the layers made from the fx nodes the user names
(`--keep-f32`, `keep_f32.fx_nodes_at`) stay f32, and `kept_f32` records them:

* int8: NNCF's IgnoredScope leaves them out of quantisation (`not_quantized`).
* bf16 on the CPU: a copy of the IR, `openvino_bf16/model.xml`, types every layer the bf16
  hint would compute in bf16 as bf16 (Converts between; not the graph's tail, nor a layer
  whose data is a constant or an input, which the hint leaves f32 too) and the kept layers
  f32, and is compiled with `INFERENCE_PRECISION_HINT=f32`, under which the plugin changes no
  element type (`explicit.explicit_bf16`). The mark below does not hold there: the CPU plugin
  reads it under bf16 only when it builds its executable graph, after passes that rebuild
  nodes and drop it (a MatMul fused with what surrounds it runs in bf16: clusters.py's
  distances; 40 of FlashOcc's 148 index-math layers when the geometry is not an output).
* f16 (and bf16 elsewhere): a copy of the IR, `openvino_<precision>/model.xml`, marks them
  (and the constants and inputs they read) with OpenVINO's runtime attribute
  `DisablePrecisionConversion`, the one its own mixed precision uses
  (`keep_f32.mark_keep_f32`), and is compiled with the hint. Under f16 the GPU plugin's and
  the CPU plugin's first precision pass (ConvertPrecision f32 → f16) keeps the marked nodes
  f32 and puts Converts around them, so the precision lives in the element types from then
  on.

`kept_f32.reduced` lists the kept layers the compiled model's runtime graph shows in bf16 or f16
anyway (docs/devices.md: what stays f32 under each hint, measured).
"""

from dynexport.precision.index_math import index_math_layers
from dynexport.precision.keep_f32 import fx_nodes_at, parse_location
from dynexport.precision.records import (
    AccuracyControl,
    AccuracyControlResult,
    Candidate,
    KeptF32,
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
           "Candidate", "KeptF32", "PrecisionError", "PrecisionResult", "VariantComparison",
           "apply_precision", "device_capabilities", "f16_note", "fx_nodes_at",
           "index_math_layers", "parse_location", "variant_ir"]
