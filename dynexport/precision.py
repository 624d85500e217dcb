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

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import statistics
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from dynexport import progress
from dynexport.capture import Capture
from dynexport.compare import Differences, json_number, label_agreement, percent
from dynexport.conversion import Converted, program_signature
from dynexport.eager import EagerRun
from dynexport.inputs import Inputs
from dynexport.isolation import run_isolated
from dynexport.measure import measure
from dynexport.names import Precision
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG, OpenVINORunner, timings, to_numpy
from dynexport.script import Script, ScriptError
from dynexport.stage import Run, Stage, StageFailed

# What --precision auto tries, besides f32 (the fastest within the accuracy budget wins).
AUTO_CANDIDATES: tuple[Precision, ...] = ("bf16", "f16", "int8")


class PrecisionError(RuntimeError):
    """A precision cannot be produced here (e.g. NNCF missing); the message says what to do."""


# --- index math in the IR ------------------------------------------------------------------------

_FLOAT = {"FP32", "FP16", "BF16", "FP64"}
# Learned layers: the bulk of the arithmetic, which reduced precision is meant for. The walk
# from an index stops there; their inputs are features, not coordinates.
_LEARNED = {"Convolution", "GroupConvolution", "ConvolutionBackpropData",
            "GroupConvolutionBackpropData"}
# Integer results that only pass through these on their way to a Result are labels (an
# argmax output), not indices.
_PASS_THROUGH = {"Convert", "Squeeze", "Unsqueeze", "Reshape", "Transpose"}


@dataclass
class _Layer:
    type: str
    name: str
    inputs: dict[str, str]  # port id → precision
    outputs: dict[str, str]


class _IR:
    """model.xml as a graph of layers and port-to-port edges."""

    def __init__(self, xml: Path):
        root = ET.parse(xml).getroot()
        self.layers: dict[str, _Layer] = {}
        for element in root.iter("layer"):
            ports = {}
            for kind in ("input", "output"):
                block = element.find(kind)
                ports[kind] = {} if block is None else {
                    port.get("id"): port.get("precision", "") for port in block.findall("port")}
            self.layers[element.get("id")] = _Layer(element.get("type"), element.get("name"),
                                                    ports["input"], ports["output"])
        self.producer: dict[tuple[str, str], tuple[str, str]] = {}
        self.consumers: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for edge in root.iter("edge"):
            source = (edge.get("from-layer"), edge.get("from-port"))
            target = (edge.get("to-layer"), edge.get("to-port"))
            self.producer[target] = source
            self.consumers.setdefault(source, []).append(target)

    def is_weight(self, layer_id: str, port: str) -> bool:
        """Whether an input is a constant, possibly decompressed or fake-quantized."""
        source = self.producer.get((layer_id, port))
        while source is not None:
            layer = self.layers[source[0]]
            if layer.type == "Const":
                return True
            if layer.type not in ("Convert", "FakeQuantize"):
                return False
            source = self.producer.get((source[0], next(iter(layer.inputs))))
        return False

    def is_learned(self, layer_id: str) -> bool:
        layer = self.layers[layer_id]
        return layer.type in _LEARNED or (layer.type == "MatMul" and self.is_weight(layer_id, "1"))

    def used_as_integer(self, layer_id: str, port: str) -> bool:
        """Whether an integer output feeds anything but a Result (through pass-through ops)."""
        pending, seen = [(layer_id, port)], set()
        while pending:
            source = pending.pop()
            for target_layer, _ in self.consumers.get(source, []):
                layer = self.layers[target_layer]
                if layer.type == "Result" or target_layer in seen:
                    continue
                if layer.type not in _PASS_THROUGH or any(
                        p in _FLOAT for p in layer.outputs.values()):
                    return True
                seen.add(target_layer)
                pending += [(target_layer, p) for p in layer.outputs]
        return False

    def index_math(self) -> list[str]:
        """Ids of the float layers whose results become integers used inside the graph."""
        boundaries = [
            layer_id for layer_id, layer in self.layers.items()
            if layer.type not in ("Const", "Parameter", "ShapeOf")
            and any(p in _FLOAT for p in layer.inputs.values())
            and any(p not in _FLOAT and p != "BOOL" and self.used_as_integer(layer_id, port)
                    for port, p in layer.outputs.items())]
        found: dict[str, None] = {}
        pending = list(boundaries)
        while pending:
            layer_id = pending.pop()
            if layer_id in found:
                continue
            found[layer_id] = None
            for port, precision in self.layers[layer_id].inputs.items():
                source = self.producer.get((layer_id, port))
                if precision not in _FLOAT or source is None:
                    continue
                producer = self.layers[source[0]]
                if producer.type == "Parameter" or self.is_learned(source[0]):
                    continue
                if producer.type != "Const":
                    pending.append(source[0])
        return list(found)


def index_math_layers(xml: str | os.PathLike) -> list[str]:
    """Names of the layers of `xml` that compute values later used as integers (indices,
    sizes) inside the graph: floating-point layers upstream of a float → integer step whose
    result is not only a model output (labels are), stopping at learned layers
    (convolutions, matrix products with constant weights) and at inputs."""
    ir = _IR(Path(xml))
    return [ir.layers[i].name for i in ir.index_math()]


# --- the precision stage -------------------------------------------------------------------------

@dataclass
class VariantComparison:
    """One output of the reduced-precision model against the f32 model on one input."""

    inputs: str
    output: str
    max_abs_diff: float
    label_agreement: float | None  # compare.label_agreement: None for a float output not
    # judged by its labels

    COLUMNS = ("inputs", "output", "max abs diff", "labels agree")

    def cells(self) -> tuple[str, ...]:
        return (self.inputs, self.output, f"{self.max_abs_diff:.3g}",
                percent(self.label_agreement))


@dataclass
class AccuracyControl:
    """What int8 needs to keep the layers that cost accuracy in floating point: the script's
    validation data and metric, the structure eager returns its outputs in (the metric reads
    the runtime's outputs rebuilt into it) and the budget, in points of the primary metric."""

    validation: Sequence[tuple[Inputs, Any]]
    metric: Callable[[list[Any], list[Any]], dict[str, float]]
    output_spec: pytree.TreeSpec
    max_drop: float


@dataclass
class AccuracyControlResult:
    """What `nncf.quantize_with_accuracy_control` did. `metric_f32` and `metric_int8_before`
    are NNCF's (its log: the f32 IR and the fully quantised IR, both compiled at f32 on the
    CPU); `metric_int8_after` is measured here on the IR it returned, the same way; `reverted`
    are the layers with quantised inputs in the fully quantised IR and none in the returned
    one (what NNCF kept in floating point)."""

    metric: str
    max_drop: float
    samples: int
    metric_f32: float | None
    metric_int8_before: float | None
    metric_int8_after: float
    quantized_layers: int  # with quantised inputs, in the fully quantised IR
    reverted: list[str]

    def summary(self) -> str:
        values = ", ".join(f"{label} {value:.3f}" for label, value in (
            ("f32 IR", self.metric_f32), ("fully quantized", self.metric_int8_before),
            ("shipped", self.metric_int8_after)) if value is not None)
        if not self.reverted:
            return (f"NNCF's accuracy control reverted no layer ({self.metric}: {values}; "
                    f"max drop {self.max_drop:g})")
        shown = ", ".join(self.reverted[:3]) + (", …" if len(self.reverted) > 3 else "")
        reached = (self.metric_f32 is None
                   or self.metric_int8_after >= self.metric_f32 - self.max_drop)
        return (f"NNCF's accuracy control kept {len(self.reverted)} of "
                f"{self.quantized_layers} quantized layers in floating point ({shown}) "
                f"({self.metric}: {values}; max drop {self.max_drop:g}"
                + ("" if reached else ", not reached") + ")")

    def to_json(self) -> dict:
        return {"metric": self.metric, "max_drop": self.max_drop, "drop_type": "absolute",
                "samples": self.samples, "metric_f32": json_number(self.metric_f32),
                "metric_int8_before": json_number(self.metric_int8_before),
                "metric_int8_after": json_number(self.metric_int8_after),
                "quantized_layers": self.quantized_layers,
                "reverted": {"count": len(self.reverted), "layers": list(self.reverted)}}


@dataclass
class Candidate:
    """One precision --precision auto tried: its speed and its metric on the validation data."""

    precision: str
    inference_precision: str
    median_ms: float
    speedup: float  # against OpenVINO f32
    value: float | None  # the primary metric; None: the candidate could not be made
    delta: float | None  # against eager f32
    # why it could not be made (e.g. NNCF missing), or what it really computed (f16 on a
    # device without f16 arithmetic) and what int8's accuracy control did
    note: str | None = None
    # integer outputs: the share of elements equal to eager f32's on the validation data
    label_agreement: dict[str, float] | None = None

    COLUMNS = ("precision", "computes in", "median ms", "speed-up", "metric", "delta", "note")

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def cells(self) -> tuple[str, ...]:
        if self.value is None:
            return (self.precision, "", "", "", "not made", "", self.note or "")
        return (self.precision, self.inference_precision, f"{self.median_ms:.2f}",
                f"{self.speedup:.2f}×", f"{self.value:.3f}", f"{self.delta:+.3f}",
                self.note or "")


@dataclass
class PrecisionResult:
    """What `--precision` produced and how it compares with f32."""

    precision: Precision
    artifact: str | None  # the IR written (int8, fp16-weights); None: the f32 IR with a hint
    openvino_config: dict[str, str]  # compile_model config it was measured with
    inference_precision: str  # what the compiled model reports (bf16 falls back on old CPUs)
    f32_median_ms: float
    median_ms: float
    speedup: float
    runs: int
    calibration_samples: int | None = None  # int8
    not_quantized: list[str] | None = None  # int8: the index math, left in f32
    comparisons: list[VariantComparison] = field(default_factory=list)
    # --precision auto: every candidate tried, and why this one was chosen
    candidates: list[Candidate] = field(default_factory=list)
    chosen_because: str | None = None
    # f16 on a device without f16 arithmetic: what it computed instead, said plainly
    note: str | None = None
    # int8 with the script's metric: what nncf.quantize_with_accuracy_control did
    accuracy_control: AccuracyControlResult | None = None

    def remarks(self) -> str | None:
        """The note and what accuracy control did, as sentences; None when neither."""
        parts = [self.note, self.accuracy_control and self.accuracy_control.summary()]
        return " ".join(f"{p}." for p in parts if p) or None

    def summary(self) -> str:
        if self.chosen_because:
            text = f"--precision auto chose {self.precision}: {self.chosen_because}."
        else:
            text = (f"OpenVINO computes in {self.inference_precision}: {self.median_ms:.2f} ms "
                    f"against {self.f32_median_ms:.2f} ms at f32 ({self.speedup:.2f}× faster)"
                    + (f"; calibrated on {self.calibration_samples} inputs"
                       if self.calibration_samples else "") + ".")
        return text + (f" {self.remarks()}" if self.remarks() else "")

    def to_json(self) -> dict:
        data = asdict(self)
        data["candidates"] = [c.to_json() for c in self.candidates]
        if not self.candidates:
            del data["candidates"], data["chosen_because"]
        for optional in ("note", "accuracy_control"):
            if data[optional] is None:
                del data[optional]
        if self.accuracy_control is not None:
            data["accuracy_control"] = self.accuracy_control.to_json()
        data["not_quantized"] = None if self.not_quantized is None else len(self.not_quantized)
        for comparison in data["comparisons"]:
            comparison["max_abs_diff"] = json_number(comparison["max_abs_diff"])
        return data


def apply_precision(precision: Precision, f32_xml: str | os.PathLike, out_dir: str | os.PathLike,
                    inputs: dict[str, Inputs], calibration: Sequence[Inputs],
                    output_names: Sequence[str] | None = None, device: str = "CPU",
                    runs: int = 5, control: AccuracyControl | None = None,
                    labelled: Collection[str] = ()) -> PrecisionResult:
    """Produce `precision` from the f32 IR, time it and compare it with f32 on `inputs`.
    `calibration` feeds int8 quantisation; `control` (the script's validation data and
    metric) makes it keep the layers that cost more than `control.max_drop` in float.
    `labelled`: the float outputs judged by their argmax labels (compare.label_agreement)."""
    if precision == "f32":
        raise ValueError("f32 is what verification pins; there is nothing to convert")
    f32_xml, out_dir = Path(f32_xml), Path(out_dir)
    artifact: Path | None = None
    config = dict(DEFAULT_OPENVINO_CONFIG)
    samples, ignored, controlled, capabilities = None, None, None, None
    if precision in ("bf16", "f16"):
        config["INFERENCE_PRECISION_HINT"] = precision
        if precision == "f16":
            capabilities = device_capabilities(device)
    elif precision == "fp16-weights":
        artifact = _compress_weights(f32_xml, out_dir / "openvino_fp16" / "model.xml")
    else:
        samples, ignored = len(calibration), index_math_layers(f32_xml)
        artifact, controlled = _quantize(f32_xml, out_dir / "openvino_int8" / "model.xml",
                                         calibration, ignored, control)
    reference = OpenVINORunner(f32_xml, device)
    runner = OpenVINORunner(artifact or f32_xml, device, config)
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
    return PrecisionResult(
        precision=precision, artifact=str(artifact) if artifact else None,
        openvino_config=config, inference_precision=computed,
        f32_median_ms=round(f32_ms, 3), median_ms=round(variant_ms, 3),
        speedup=round(f32_ms / variant_ms, 3), runs=runs, calibration_samples=samples,
        not_quantized=ignored, comparisons=comparisons, accuracy_control=controlled,
        note=f16_note(device, capabilities, computed) if precision == "f16" else None)


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


def _compress_weights(f32_xml: Path, target: Path) -> Path:
    import openvino as ov

    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.Core().read_model(f32_xml), target, compress_to_fp16=True)
    return target


def _quantize(f32_xml: Path, target: Path, calibration: Sequence[Inputs], ignored: list[str],
              control: AccuracyControl | None = None) -> tuple[Path, AccuracyControlResult | None]:
    """NNCF post-training quantisation with the MIXED preset (symmetric weights, asymmetric
    activations: on FlashOcc M0 68 % of the labels agree with f32 against 37 % with the
    default symmetric preset, at the same speed), the index math excluded so that
    coordinates are not rounded to 256 levels. With `control`, accuracy-controlled."""
    try:
        import nncf
    except ImportError as exc:
        raise PrecisionError("--precision int8 needs NNCF: pip install nncf (or "
                             "`pip install -c constraints.txt -e \".[precision]\"`).") from exc
    import openvino as ov

    if not calibration:
        raise PrecisionError("--precision int8 needs calibration inputs (get_inputs, "
                             "get_probe_inputs or get_calibration_inputs in the script).")
    nncf.set_log_level(logging.ERROR)
    dataset = nncf.Dataset([to_numpy(values.tensors()) for values in calibration])
    settings = {"preset": nncf.QuantizationPreset.MIXED, "subset_size": len(calibration),
                "ignored_scope": nncf.IgnoredScope(names=ignored, validate=False)}
    model, result = ov.Core().read_model(f32_xml), None
    target.parent.mkdir(parents=True, exist_ok=True)
    # NNCF draws rich progress bars on stdout, across the CLI's own live display.
    with contextlib.redirect_stdout(io.StringIO()):
        if control is None:
            ov.save_model(nncf.quantize(model, dataset, **settings), target,
                          compress_to_fp16=False)
        else:
            result = _quantize_with_accuracy_control(model, dataset, settings, control, target)
    return target, result


def _quantize_with_accuracy_control(model: Any, dataset: Any, settings: dict,
                                    control: AccuracyControl,
                                    target: Path) -> AccuracyControlResult:
    """`nncf.quantize_with_accuracy_control` on the script's validation data: NNCF quantises,
    compares the metric with the f32 IR's and reverts the layers that cost the most to
    floating point until the drop is within `control.max_drop` (absolute points). The IR it
    returns is written to `target` and measured from there, as it ships."""
    import nncf
    import openvino as ov

    items = [(to_numpy(inputs.tensors()), truth) for inputs, truth in control.validation]
    validate, primary = _validation_fn(control)
    with tempfile.TemporaryDirectory() as folder, _nncf_log() as log:
        quantized = nncf.quantize_with_accuracy_control(
            model, dataset, nncf.Dataset(items), validate, max_drop=control.max_drop,
            drop_type=nncf.DropType.ABSOLUTE, **settings,
            advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                ranking_subset_size=len(items), intermediate_model_dir=folder))
        fully = _quantized_layers(ov.Core().read_model(Path(folder) / "intermediate_model.xml"))
    kept = _quantized_layers(quantized)
    ov.save_model(quantized, target, compress_to_fp16=False)
    progress.step("int8 accuracy control: the shipped IR on the validation data")
    after, _ = validate(ov.Core().compile_model(target, "CPU", DEFAULT_OPENVINO_CONFIG), items)
    reported = dict(re.findall(r"Metric of (initial|quantized) model: (\S+)", "\n".join(log)))
    return AccuracyControlResult(
        metric=primary[0], max_drop=control.max_drop, samples=len(items),
        metric_f32=_float(reported.get("initial")),
        metric_int8_before=_float(reported.get("quantized")), metric_int8_after=after,
        quantized_layers=len(fully), reverted=sorted(fully - kept))


def _validation_fn(control: AccuracyControl) -> tuple[Callable, list[str]]:
    """NNCF's validation_fn(compiled_model, items) -> (metric, metric per item): each item's
    inputs through the compiled model, the outputs rebuilt into eager's structure, scored
    with the script's primary metric. The list returned beside it gets the metric's name."""
    primary: list[str] = []
    calls = [0]

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        calls[0] += 1
        progress.step(f"int8 accuracy control: validation {calls[0]}")
        request = compiled.create_infer_request()
        outputs, targets = [], []
        for feeds, target in items:
            results = request.infer(feeds, share_inputs=False)
            flat = [torch.from_numpy(np.array(results[output])) for output in compiled.outputs]
            outputs.append(pytree.tree_unflatten(flat, control.output_spec))
            targets.append(target)
        values = control.metric(outputs, targets)
        if not primary:
            primary.append(next(iter(values)))
        name = primary[0]
        return values[name], [control.metric([o], [t])[name]
                              for o, t in zip(outputs, targets, strict=True)]

    return validate, primary


@contextlib.contextmanager
def _nncf_log() -> Iterator[list[str]]:
    """NNCF's log messages (INFO and up) collected instead of printed."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("nncf")
    handlers, level = logger.handlers[:], logger.level
    logger.handlers = [Collect(logging.INFO)]
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.handlers = handlers
        logger.setLevel(level)


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _quantized_layers(model: Any) -> set[str]:
    """Friendly names of the layers of an OpenVINO model that take a fake-quantised
    activation (a FakeQuantize, maybe through Converts, of something not constant; weights
    may be stored compressed instead, so only activations tell)."""
    def through_converts(node: Any) -> Any:
        while node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        return node

    names = set()
    for op in model.get_ops():
        if op.get_type_name() in ("FakeQuantize", "Convert", "Constant", "Result"):
            continue
        for value in op.input_values():
            source = through_converts(value.get_node())
            if (source.get_type_name() == "FakeQuantize" and through_converts(
                    source.input_value(0).get_node()).get_type_name() != "Constant"):
                names.add(op.get_friendly_name())
                break
    return names


# --- the stage ---------------------------------------------------------------------------------

def variant_ir(run: Run, result: PrecisionResult) -> str:
    """The IR `result` runs: its own (int8, fp16-weights), or the f32 IR with its hint."""
    return result.artifact or run.result("openvino", Converted).artifact


def _run(run: Run) -> PrecisionResult:
    """--precision other than f32: calibrates on get_calibration_inputs() if the script has it,
    else on the example and the probe; in a child process like every runtime."""
    script, eager = run.result("load", Script), run.result("eager", EagerRun)
    f32 = run.result("openvino", Converted)
    inputs = eager.inputs
    calibration = script.calibration() if script.calibration else list(inputs.values())
    names = eager.output_names()
    control = None
    if (script.validation is not None and script.metric is not None
            and run.options.precision in ("int8", "auto")):
        # The data is made here, as the accuracy stage makes it, not in the child: torch runs
        # on one thread there, and FlashOcc's scenes made on one thread differ in rounding
        # enough to move its int8 mIoU by 0.1.
        spec = run.result("capture", Capture).program.call_spec.out_spec
        control = AccuracyControl(script.validation(), script.metric, spec,
                                  run.options.accuracy_budget)

    def made(precision: Precision) -> PrecisionResult:
        return run_isolated(
            lambda: apply_precision(precision, f32.artifact, run.options.out_dir, inputs,
                                    calibration, names, run.options.device,
                                    control=control if precision == "int8" else None,
                                    labelled=script.labelled_outputs()),
            f"--precision {precision}", run.options.isolation)

    if run.options.precision != "auto":
        return made(run.options.precision)
    return _choose(run, script, made)


def _choose(run: Run, script: Script, made) -> PrecisionResult:
    """--precision auto: the fastest candidate whose primary metric on the validation data
    stays within --accuracy-budget points of eager f32; f32 itself when none does."""
    if script.validation is None or script.metric is None:
        raise ScriptError(f"--precision auto chooses by accuracy, and {script.path} defines no "
                          "`get_validation_data()` and `metric(outputs, targets)`. Define both "
                          "(contract section 2), or name a precision, e.g. `--precision bf16`.")
    budget = run.options.accuracy_budget
    metric = "the metric"
    tried: list[tuple[PrecisionResult | None, Candidate]] = []
    for precision in AUTO_CANDIDATES:
        try:
            result = made(precision)
        except PrecisionError as exc:  # e.g. int8 without NNCF: say so, try the others
            tried.append((None, Candidate(precision, "", 0.0, 0.0, None, None, str(exc))))
            continue
        accuracy = measure(script, [("openvino", precision, variant_ir(run, result),
                                     result.openvino_config)],
                           run.options.device, run.options.isolation, run.options.static,
                           pictures=run.options.out_dir, signature=program_signature(run))
        row, metric = accuracy.rows[-1], accuracy.metric
        tried.append((result, Candidate(precision, result.inference_precision, result.median_ms,
                                        result.speedup, row.value, row.delta,
                                        result.remarks(), row.label_agreement or None)))
    within = [(r, c) for r, c in tried if r is not None and c.delta >= -budget]
    if not within:
        made_any = [r for r, _ in tried if r is not None]
        if not made_any:
            raise StageFailed("--precision auto: no candidate could be made: "
                              + "; ".join(c.note or c.precision for _, c in tried))
        f32_ms = made_any[0].f32_median_ms
        return PrecisionResult(
            "f32", None, dict(DEFAULT_OPENVINO_CONFIG), "f32", f32_ms, f32_ms, 1.0,
            made_any[0].runs, candidates=[c for _, c in tried],
            chosen_because=f"no candidate stays within {budget} {metric} points of eager f32: "
                           "f32 ships")
    chosen, candidate = min(within, key=lambda pair: pair[1].median_ms)
    chosen.candidates = [c for _, c in tried]
    chosen.chosen_because = (
        f"{candidate.precision} is the fastest candidate within {budget} {metric} points of "
        f"eager f32 ({candidate.delta:+.3f}; {candidate.speedup:.2f}× OpenVINO f32)")
    return chosen


PRECISION_STAGE = Stage("precision", _run, needs=("capture", "eager", "openvino"),
                        requested=lambda run: "" if run.options.precision == "f32"
                        else run.options.device_missing)
