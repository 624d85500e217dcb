"""Verify stage: run each converted model on the example and the probe inputs and compare
every output with eager PyTorch's output on the same inputs (from the eager stage).

Each runtime runs in a child process (isolation.py): a runtime that crashes while compiling
or running fails its own records, not dynexport."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynexport import progress
from dynexport.compare import Differences, as_array, json_number, label_agreement, percent
from dynexport.errors import summary
from dynexport.inputs import Inputs, Signature
from dynexport.isolation import ISOLATED, ChildLost, Isolation, run_isolated
from dynexport.names import InputKind, RuntimeName
from dynexport.runtimes import Runner, open_runner, to_numpy
from dynexport.tolerance import DEFAULT_TOLERANCE, Tolerance

# (rtol, atol as a fraction of the output's largest magnitude) per reference dtype. float64 gets
# float32's: OpenVINO's CPU plugin and several onnxruntime kernels compute float64 in float32.
_FLOAT_TOLERANCE = {
    np.dtype(np.float64): (1e-3, 1e-4),
    np.dtype(np.float32): (1e-3, 1e-4),
    np.dtype(np.float16): (1e-2, 1e-2),
}
# Integer outputs such as argmax labels may flip on near-ties of float logits.
MIN_INTEGER_AGREEMENT = 0.999


@dataclass
class Comparison:
    """One output against its reference: differences, how many elements fall outside the
    tolerance, label agreement (compare.py), and, when it fails for a reason other
    than the values, that reason."""

    max_abs_diff: float
    max_rel_diff: float
    passed: bool
    label_agreement: float | None = None  # integer outputs: share of equal elements
    reason: str | None = None  # e.g. "shape (0, 4) instead of eager's (300, 4)"
    outside: int = 0  # elements outside the tolerance (integers: unequal)
    elements: int = 0

    @classmethod
    def of(cls, reference: Any, actual: Any,
           tolerance: Tolerance = DEFAULT_TOLERANCE) -> Comparison:
        """Compare `actual` with `reference` (arrays or tensors): differences and label
        agreement as compare.py defines them, judged by `tolerance`."""
        reference, actual = as_array(reference), as_array(actual)
        if reference.shape != actual.shape:
            return cls(float("inf"), float("inf"), False, reason=(
                f"shape {tuple(actual.shape)} instead of eager's {tuple(reference.shape)}"))
        integer = reference.dtype.kind in "biu"
        if reference.size == 0:
            return cls(0.0, 0.0, True, 1.0 if integer else None)
        found = Differences.of(reference, actual)
        max_abs, max_rel, diff = found.max_abs, found.max_rel, found.diff
        agreement = label_agreement(reference, actual, tolerance.argmax)
        if integer:
            return cls._by_labels(max_abs, max_rel, agreement, tolerance,
                                  int(np.count_nonzero(diff)), diff.size)
        rtol, atol = _FLOAT_TOLERANCE.get(reference.dtype,
                                          _FLOAT_TOLERANCE[np.dtype(np.float16)])
        rtol = rtol if tolerance.rtol is None else tolerance.rtol
        atol = atol if tolerance.atol is None else tolerance.atol
        bound = found.magnitude
        bound *= rtol  # in place: the tolerance array reuses the magnitude's memory
        bound += atol * max(found.scale, 1.0)
        outside = int(np.count_nonzero(diff > bound))
        if agreement is not None:  # judged by the argmax labels
            return cls._by_labels(max_abs, max_rel, agreement, tolerance, outside, diff.size)
        share = 1.0 if tolerance.share is None else tolerance.share
        return cls(max_abs, max_rel, _meets(1.0 - outside / diff.size, share),
                   outside=outside, elements=diff.size)

    @classmethod
    def _by_labels(cls, max_abs: float, max_rel: float, agreement: float, tolerance: Tolerance,
                   outside: int, elements: int) -> Comparison:
        """Judged by the share of labels equal to eager's: at least the tolerance's share,
        by default MIN_INTEGER_AGREEMENT (labels may flip on near-ties)."""
        share = MIN_INTEGER_AGREEMENT if tolerance.share is None else tolerance.share
        return cls(max_abs, max_rel, _meets(agreement, share), agreement, outside=outside,
                   elements=elements)


def compare(reference: Any, actual: Any, tolerance: Tolerance = DEFAULT_TOLERANCE) -> Comparison:
    return Comparison.of(reference, actual, tolerance)


@dataclass
class Verification:
    """One output of one runtime on one input, compared with eager PyTorch."""

    runtime: RuntimeName
    inputs: InputKind
    output: str
    max_abs_diff: float
    max_rel_diff: float
    passed: bool
    label_agreement: float | None = None
    error: str | None = None  # why it failed, when not by its values
    runtime_failed: bool = False  # the runtime raised or crashed: no values were compared
    outside: int = 0  # elements outside the tolerance (integers: unequal to eager's)
    elements: int = 0

    COLUMNS = ("runtime", "inputs", "output", "max abs", "max rel", "labels agree",
               "outside tolerance", "passed")

    @classmethod
    def from_comparison(cls, runtime: RuntimeName, inputs: InputKind, output: str,
                        comparison: Comparison) -> Verification:
        return cls(runtime, inputs, output, comparison.max_abs_diff, comparison.max_rel_diff,
                   comparison.passed, comparison.label_agreement, comparison.reason,
                   outside=comparison.outside, elements=comparison.elements)

    def to_json(self) -> dict:
        data = {"runtime": self.runtime, "inputs": self.inputs, "output": self.output,
                "max_abs_diff": json_number(self.max_abs_diff),
                "max_rel_diff": json_number(self.max_rel_diff), "passed": self.passed}
        if self.label_agreement is not None:
            data["label_agreement"] = self.label_agreement
        if self.elements:
            data["outside"], data["elements"] = self.outside, self.elements
        if self.error:
            data["error"] = self.error
        return data

    def cells(self) -> tuple[str, ...]:
        agreement = percent(self.label_agreement)
        verdict = "yes" if self.passed else "NO" + (f" ({self.error})" if self.error else "")
        outside = f"{self.outside:,} of {self.elements:,}" if self.outside else ""
        return (self.runtime, self.inputs, self.output, f"{self.max_abs_diff:.3g}",
                f"{self.max_rel_diff:.3g}", agreement, outside, verdict)


def verify(expected: dict[InputKind, list[tuple[str, Any]]], runner: Runner,
           inputs: dict[InputKind, Inputs], repeats: int = 2,
           tolerances: dict[str, Tolerance] | None = None) -> list[Verification]:
    """Compare `runner` with eager's `expected` outputs on every named input, each output
    judged by its entry in `tolerances` (default: the dtype's); the runner runs `repeats`
    times per input and the worst difference counts (multi-threaded kernels may race)."""
    records: list[Verification] = []
    for kind, values in inputs.items():
        progress.step(f"{runner.name} on the {kind} input")
        records += _verify_input(runner, kind, to_numpy(values.tensors()), expected[kind],
                                 repeats, tolerances or {})
    return records


def _verify_input(runner: Runner, kind: InputKind, feeds: list[np.ndarray],
                  expected: list[tuple[str, Any]], repeats: int,
                  tolerances: dict[str, Tolerance]) -> list[Verification]:
    worst: dict[str, Verification] = {}
    for _ in range(repeats):
        try:
            outputs = runner.run(feeds)
        except Exception as exc:  # a runtime refusing an input is a verification failure
            return failed_records(runner.name, kind, expected, summary(exc))
        if len(outputs) != len(expected):
            return failed_records(runner.name, kind, expected,
                                  f"{runner.name} returned {len(outputs)} outputs, eager "
                                  f"{len(expected)}")
        for (name, reference), actual in zip(expected, outputs, strict=True):
            comparison = Comparison.of(reference, actual, tolerances.get(name, DEFAULT_TOLERANCE))
            record = Verification.from_comparison(runner.name, kind, name, comparison)
            previous = worst.get(name)
            if previous is None or (previous.passed and (
                    not record.passed or record.outside > previous.outside
                    or record.max_abs_diff > previous.max_abs_diff)):
                worst[name] = record
    return list(worst.values())


def failed_records(runtime: RuntimeName, kind: InputKind, expected: list[tuple[str, Any]],
                   error: str) -> list[Verification]:
    return [Verification(runtime, kind, name, float("inf"), float("inf"), False, error=error,
                         runtime_failed=True) for name, _ in expected]




def _meets(share: float, required: float) -> bool:
    """`share` >= `required`, where both may carry float rounding (1 - 0.9998 is not 2e-4)."""
    return share >= required or math.isclose(share, required, rel_tol=1e-9)






# --- the stage ------------------------------------------------------------------------------

def verify_artifact(runtime: RuntimeName, artifact: Path, device: str,
                    expected: dict[InputKind, list[tuple[str, Any]]],
                    inputs: dict[InputKind, Inputs], isolation: Isolation = ISOLATED,
                    tolerances: dict[str, Tolerance] | None = None,
                    signature: Signature | None = None) -> list[Verification]:
    """Open `artifact` in `runtime` and verify it, in a child process: a crash while compiling
    or running becomes failed records naming the signal."""
    def opened_and_verified() -> list[Verification]:
        progress.step(f"{runtime}: compiling {artifact.name}")
        try:
            runner = open_runner(runtime, artifact, device, signature=signature)
        except Exception as exc:  # a model the runtime cannot compile fails every record
            return _failed_everywhere(runtime, expected, inputs, f"compiling: {summary(exc)}")
        return verify(expected, runner, inputs, tolerances=tolerances)

    try:
        return run_isolated(opened_and_verified, f"{runtime} on {artifact.name}", isolation)
    except ChildLost as lost:
        return _failed_everywhere(runtime, expected, inputs, str(lost))


def _failed_everywhere(runtime: RuntimeName, expected: dict[InputKind, list[tuple[str, Any]]],
                       inputs: dict[InputKind, Inputs], error: str) -> list[Verification]:
    return [record for kind in inputs
            for record in failed_records(runtime, kind, expected[kind], error)]
