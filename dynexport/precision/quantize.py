"""int8 with NNCF: post-training quantisation on the calibration inputs, or with accuracy
control on the script's validation data and metric."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from dynexport import progress
from dynexport.inputs import Inputs
from dynexport.precision.records import AccuracyControl, AccuracyControlResult, PrecisionError
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG, to_numpy


def quantize_ir(f32_xml: Path, target: Path, calibration: Sequence[Inputs], ignored: list[str],
              control: AccuracyControl | None = None) -> tuple[Path, AccuracyControlResult | None]:
    """NNCF post-training quantisation with the MIXED preset (symmetric weights, asymmetric
    activations: on FlashOcc M0 far more labels agree with f32 than with the default symmetric
    preset, at the same speed; docs/performance.md), the index math excluded so that
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
        fully = quantized_layers(ov.Core().read_model(Path(folder) / "intermediate_model.xml"))
    kept = quantized_layers(quantized)
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


def quantized_layers(model: Any) -> set[str]:
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
