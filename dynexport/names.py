"""The report's vocabularies (contract §3-4), in one place: the code's Literal types and
dynexport/schema/report.schema.json's enums are both these (tests/test_schema.py checks it)."""

from __future__ import annotations

from typing import Literal, get_args

StageName = Literal["load", "eager", "capture", "decompose", "onnx", "openvino", "verify",
                    "precision", "accuracy", "localize", "serving", "benchmark"]
StageStatus = Literal["ok", "failed", "skipped"]
Strategy = Literal["strict", "non_strict", "draft"]
Category = Literal["data_dependent_branch", "tensor_to_python", "numpy_conversion",
                   "non_tensor_output", "unsupported_op", "graph_break", "shape_specialization",
                   "baked_constant"]
Severity = Literal["error", "warning"]
Backend = Literal["onnx", "openvino"]
RuntimeName = Literal["onnxruntime", "openvino"]
InputKind = Literal["example", "probe"]
# What the precision stage ships (report `precision.precision`); --precision also takes auto.
ShippedPrecision = Literal["f32", "bf16", "f16", "int8", "fp16-weights"]
Precision = Literal[ShippedPrecision, "auto"]
Layout = Literal["ovms", "triton"]
# Why a converted model diverges (report `divergence[].cause`, contract §7) and whose
# translation the responsible op went through.
Cause = Literal["lowering", "nondeterminism", "precision"]
Translation = Literal["exporter", "dynexport", "user"]

STAGE_NAMES: tuple[StageName, ...] = get_args(StageName)
STAGE_STATUSES: tuple[StageStatus, ...] = get_args(StageStatus)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
CATEGORIES: tuple[Category, ...] = get_args(Category)
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
BACKENDS: tuple[Backend, ...] = get_args(Backend)
RUNTIMES: tuple[RuntimeName, ...] = get_args(RuntimeName)
INPUT_KINDS: tuple[InputKind, ...] = get_args(InputKind)
SHIPPED_PRECISIONS: tuple[ShippedPrecision, ...] = get_args(ShippedPrecision)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
LAYOUTS: tuple[Layout, ...] = get_args(Layout)
CAUSES: tuple[Cause, ...] = get_args(Cause)
TRANSLATIONS: tuple[Translation, ...] = get_args(Translation)
