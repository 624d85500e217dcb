"""Making one precision variant of the f32 IR and measuring it against f32: the bf16/f16
hints (with the layers to keep f32 marked, keep_f32.py, or, bf16 on the CPU, typed, explicit.py),
f16 weights, int8 through quantize.py."""

from __future__ import annotations

import os
import statistics
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from dynexport.compare import Differences, label_agreement
from dynexport.conversion import Converted
from dynexport.inputs import Inputs
from dynexport.names import Precision
from dynexport.precision.explicit import computes_bf16, explicit_bf16
from dynexport.precision.index_math import index_math_layers
from dynexport.precision.keep_f32 import layers_of, mark_keep_f32, runtime_precisions
from dynexport.precision.quantize import quantize_ir, quantized_layers
from dynexport.precision.records import (
    AccuracyControl,
    KeptF32,
    PrecisionResult,
    VariantComparison,
)
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG, OpenVINORunner, timings, to_numpy
from dynexport.stage import Run


def apply_precision(precision: Precision, f32_xml: str | os.PathLike, out_dir: str | os.PathLike,
                    inputs: dict[str, Inputs], calibration: Sequence[Inputs],
                    output_names: Sequence[str] | None = None, device: str = "CPU",
                    runs: int = 5, control: AccuracyControl | None = None,
                    labelled: Collection[str] = (),
                    keep_f32: Collection[str] = ()) -> PrecisionResult:
    """Produce `precision` from the f32 IR, time it and compare it with f32 on `inputs`.
    `calibration` feeds int8 quantisation; `control` (the script's validation data and
    metric) makes it keep the layers that cost more than `control.max_drop` in float.
    `labelled`: the float outputs judged by their argmax labels (compare.label_agreement).
    The index math and the layers made from the fx nodes `keep_f32` stay f32: f16 (and bf16
    off the CPU) compiles a copy of the IR that marks them (`openvino_<precision>/model.xml`),
    bf16 on the CPU a copy in bf16 element types but theirs, compiled with the f32 hint (the
    CPU plugin loses the mark of a layer its passes rebuild), int8 leaves them out of
    quantisation; `kept_f32` records which, and which were reduced anyway."""
    if precision == "f32":
        raise ValueError("f32 is what verification pins; there is nothing to convert")
    f32_xml, out_dir = Path(f32_xml), Path(out_dir)
    artifact: Path | None = None
    config = dict(DEFAULT_OPENVINO_CONFIG)
    samples, ignored, controlled, capabilities, bf16_layers = None, None, None, None, 0
    kept = None if precision == "fp16-weights" else KeptF32(index_math_layers(f32_xml),
                                                            *layers_of(f32_xml, keep_f32))
    if precision in ("bf16", "f16"):
        config["INFERENCE_PRECISION_HINT"] = precision
        if precision == "f16":
            capabilities = device_capabilities(device)
        target = out_dir / f"openvino_{precision}" / "model.xml"
        if kept.layers and precision == "bf16" and device == "CPU":
            artifact, bf16_layers = explicit_bf16(f32_xml, target, kept.layers)
            config["INFERENCE_PRECISION_HINT"] = "f32"
            kept.explicit = True
        elif kept.layers:
            artifact = mark_keep_f32(f32_xml, target, kept.layers)
    elif precision == "fp16-weights":
        artifact = _compress_weights(f32_xml, out_dir / "openvino_fp16" / "model.xml")
    else:
        samples, ignored = len(calibration), kept.layers
        artifact, controlled = quantize_ir(f32_xml, out_dir / "openvino_int8" / "model.xml",
                                         calibration, ignored, control)
        kept.reduced = _still_quantized(artifact, ignored)
    reference = OpenVINORunner(f32_xml, device)
    runner = OpenVINORunner(artifact or f32_xml, device, config)
    if precision in ("bf16", "f16"):
        ran = runtime_precisions(runner.compiled, kept.layers)
        if ran is not None:
            kept.reduced = [name for name in kept.layers if name in ran and ran[name] != "f32"]
            kept.unseen = [name for name in kept.layers if name not in ran]
    comparisons = []
    for kind, values in inputs.items():
        feeds = to_numpy(values.tensors())
        expected, actual = reference.run(feeds), runner.run(feeds)
        names = output_names or [str(i) for i in range(len(expected))]
        comparisons += [_compare(kind, name, a, b, name in labelled)
                        for name, a, b in zip(names, expected, actual, strict=True)]
    feeds = to_numpy(next(iter(inputs.values())).tensors())
    f32_ms = statistics.median(timings(lambda: reference.run(feeds), runs))
    variant_ms = statistics.median(timings(lambda: runner.run(feeds), runs))
    computed = _type_name(str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")))
    note = f16_note(device, capabilities, computed) if precision == "f16" else None
    if kept is not None and kept.explicit:
        computed = "bf16" if computes_bf16(runner.compiled) else "f32"
        note = _explicit_note(bf16_layers, computed)
    return PrecisionResult(
        precision=precision, artifact=str(artifact) if artifact else None,
        openvino_config=config, inference_precision=computed,
        f32_median_ms=round(f32_ms, 3), median_ms=round(variant_ms, 3),
        speedup=round(f32_ms / variant_ms, 3), runs=runs, calibration_samples=samples,
        not_quantized=ignored, comparisons=comparisons, accuracy_control=controlled,
        note=note,
        kept_f32=kept if kept is not None and (kept.layers or kept.unmatched) else None)


def device_capabilities(device: str) -> list[str] | None:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of `device` (FP32, BF16, FP16, INT8, ...); None
    where the device does not report them."""
    import openvino as ov

    try:
        return [str(c) for c in ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError:
        return None


def f16_note(device: str, capabilities: list[str] | None, computed: str) -> str | None:
    """What `--precision f16` really computed, where that is not f16: a device without FP16
    among its OPTIMIZATION_CAPABILITIES (a CPU without avx512_fp16) runs the f16 hint in bf16
    or f32. None where the device has f16 arithmetic."""
    if capabilities is None:
        return None if computed == "f16" else (
            f"{device} does not report OPTIMIZATION_CAPABILITIES, so whether it has f16 "
            f"arithmetic is unknown; OpenVINO reports computing in {computed}")
    if "FP16" in capabilities:
        return None
    return (f"this {device} has no f16 arithmetic (OPTIMIZATION_CAPABILITIES: "
            f"{', '.join(capabilities)}): OpenVINO computed in {computed}; the numbers are "
            "not an Intel GPU's or NPU's f16")


def _explicit_note(bf16_layers: int, computed: str) -> str:
    """What bf16 with layers kept in f32 on the CPU computes, and why not with the bf16 hint."""
    text = (f"bf16 by the IR's element types ({bf16_layers} layer(s) in bf16; the kept layers, and "
            "those the bf16 hint leaves f32 itself, in f32), compiled with "
            "INFERENCE_PRECISION_HINT=f32: under the bf16 hint the CPU plugin loses the "
            "keep-f32 mark of the layers its passes rebuild (docs/devices.md)")
    if computed != "bf16":
        text += "; this CPU has no bf16 support, and OpenVINO computed the bf16 layers in f32"
    return text


def _compare(kind: str, name: str, expected: np.ndarray, actual: np.ndarray,
             by_argmax: bool) -> VariantComparison:
    expected, actual = np.asarray(expected), np.asarray(actual)
    return VariantComparison(kind, name, Differences.of(expected, actual).max_abs,
                             label_agreement(expected, actual, by_argmax))


def _type_name(value: str) -> str:
    """OpenVINO reports element types as `<Type: 'bfloat16'>`; the hint's own spelling is
    used everywhere else."""
    names = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}
    for long, short in names.items():
        if long in value:
            return short
    return value


def _still_quantized(quantized_xml: Path, layers: list[str]) -> list[str]:
    """Those of `layers` that take a fake-quantised activation in the quantised IR."""
    import openvino as ov

    quantized = quantized_layers(ov.Core().read_model(quantized_xml))
    return [name for name in layers if name in quantized]


def _compress_weights(f32_xml: Path, target: Path) -> Path:
    import openvino as ov

    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.Core().read_model(f32_xml), target, compress_to_fp16=True)
    return target


def variant_ir(run: Run, result: PrecisionResult) -> str:
    """The IR `result` runs, with its `openvino_config`: its own (int8, fp16-weights, bf16 and
    f16 with layers kept in f32), or the f32 IR."""
    return result.artifact or run.result("openvino", Converted).artifact
