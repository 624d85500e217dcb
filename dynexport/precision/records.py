"""What the precision stage records: the variant's comparisons with f32, NNCF's accuracy
control, `--precision auto`'s candidates and the stage's result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch.utils import _pytree as pytree

from dynexport.compare import json_number, percent
from dynexport.inputs import Inputs
from dynexport.names import Precision


class PrecisionError(RuntimeError):
    """A precision cannot be produced here (e.g. NNCF missing); the message says what to do."""


@dataclass
class KeptF32:
    """The layers kept in f32: bf16/f16 mark them in the IR (keep_f32.py) or, bf16 on the CPU,
    type everything else bf16 (`explicit`, explicit.py); int8 leaves them out of
    quantisation. `reduced`: those the compiled model's runtime graph (bf16/f16) or the
    quantised IR (int8) shows reduced anyway; None where the device's runtime graph does not
    say. `unseen`: those the runtime graph does not name (folded, or rebuilt under another
    name). `unmatched`: `--keep-f32` fx nodes no layer comes from."""

    index_math: list[str]
    chosen: list[str]  # from --keep-f32
    unmatched: list[str]
    reduced: list[str] | None = None
    unseen: list[str] = field(default_factory=list)
    explicit: bool = False

    @property
    def layers(self) -> list[str]:
        """The index math and the chosen layers, each once."""
        return list(dict.fromkeys(self.index_math + self.chosen))

    def summary(self, precision: str) -> str:
        done = ("left out of quantisation" if precision == "int8"
                else f"kept in f32 under {precision}"
                + (" by their element types" if self.explicit else ""))
        text = (f"{len(self.layers)} layers {done} (index math: {len(self.index_math)}; "
                f"--keep-f32: {len(self.chosen)})")
        if self.reduced is None:
            text += "; the device's runtime graph does not say which precision they ran in"
        elif self.reduced:
            shown = ", ".join(self.reduced[:3]) + (", …" if len(self.reduced) > 3 else "")
            text += (f"; {len(self.reduced)} of them still reduced ({shown}): "
                     + ("NNCF quantised them" if precision == "int8" else
                        "the runtime graph shows them in bf16 though the IR types them f32"
                        if self.explicit else
                        "the plugin computed them in reduced precision anyway (on the CPU under "
                        "bf16, a node its passes rebuild loses the mark: docs/devices.md)"))
        if self.unseen:
            text += (f"; {len(self.unseen)} of them are not in the runtime graph (folded when "
                     "compiling, or rebuilt under another name: precision unknown)")
        if self.unmatched:
            text += (f"; --keep-f32: no layer comes from {', '.join(self.unmatched)} (folded, "
                     "or merged into another layer by the conversion)")
        return text


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
    artifact: str | None  # the IR written; None: the f32 IR with a hint
    openvino_config: dict[str, str]  # compile_model config it was measured with, and needs
    # what the compiled model computes in: its INFERENCE_PRECISION_HINT (bf16 falls back on old
    # CPUs), or for bf16 in the IR's types (KeptF32.explicit) whether its runtime graph has bf16
    inference_precision: str
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
    # bf16, f16, int8: the index math and --keep-f32's layers kept in f32; None: none
    kept_f32: KeptF32 | None = None

    def remarks(self) -> str | None:
        """The note, what accuracy control did and which layers stayed f32, as sentences; None
        when none of them."""
        parts = [self.note, self.accuracy_control and self.accuracy_control.summary(),
                 self.kept_f32 and self.kept_f32.summary(self.precision)]
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
        # Not in the report's schema yet: report.md and the terminal show it (remarks).
        del data["kept_f32"]
        for comparison in data["comparisons"]:
            comparison["max_abs_diff"] = json_number(comparison["max_abs_diff"])
        return data
