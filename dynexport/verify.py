"""Verify stage: run each converted model on the example and the probe inputs and compare
every output with eager PyTorch on the same inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from dynexport.inputs import Inputs, flatten_outputs
from dynexport.runtimes import Runner, to_numpy

InputKind = Literal["example", "probe"]

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
class Verification:
    """One output of one runtime on one input, compared with eager PyTorch."""

    runtime: str
    inputs: InputKind
    output: str
    max_abs_diff: float
    max_rel_diff: float
    passed: bool
    error: str | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("error")
        return data


def compare(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float, bool]:
    """(max_abs_diff, max_rel_diff relative to the reference's largest magnitude, passed).

    NaN and infinity count as equal where both sides have the same one (a singular matrix
    inverts to inf/nan in every runtime); anywhere else they fail. float32 pairs are compared
    in float32: 20× faster on FlashOcc M0's 11.5 M logits (1.3 s → 0.06 s per comparison)."""
    reference, actual = np.asarray(reference), np.asarray(actual)
    if reference.shape != actual.shape:
        return float("inf"), float("inf"), False
    if reference.size == 0:
        return 0.0, 0.0, True
    work = np.float32 if reference.dtype == actual.dtype == np.float32 else np.float64
    ref = reference.astype(work, copy=False)
    act = actual.astype(work, copy=False)
    magnitude = np.abs(ref)
    if np.isfinite(ref).all() and np.isfinite(act).all():
        diff = np.abs(ref - act)
    else:
        same_nonfinite = (np.isnan(ref) & np.isnan(act)) | ((ref == act) & np.isinf(ref))
        with np.errstate(invalid="ignore"):
            diff = np.nan_to_num(np.where(same_nonfinite, 0.0, np.abs(ref - act)), nan=np.inf)
        magnitude = np.where(np.isfinite(ref), magnitude, 0.0)
    max_abs = float(diff.max())
    scale = float(magnitude.max())
    max_rel = max_abs / scale if scale > 0 else max_abs
    if reference.dtype.kind in "biu":
        return max_abs, max_rel, float((diff == 0).mean()) >= MIN_INTEGER_AGREEMENT
    rtol, atol = _FLOAT_TOLERANCE.get(reference.dtype, _FLOAT_TOLERANCE[np.dtype(np.float16)])
    magnitude *= rtol  # in place: the tolerance array reuses the magnitude's memory
    magnitude += atol * max(scale, 1.0)
    return max_abs, max_rel, bool((diff <= magnitude).all())


def reference_outputs(eager: Callable[[Inputs], Any], inputs: Inputs) -> list[tuple[str, Any]]:
    """Eager outputs, flattened and named."""
    with torch.no_grad():
        return flatten_outputs(eager(inputs))


def verify(eager: Callable[[Inputs], Any], runners: list[Runner],
           inputs: dict[InputKind, Inputs], repeats: int = 2) -> list[Verification]:
    """Compare every runner with eager on every named input; each runner runs `repeats` times
    per input and the worst difference counts (multi-threaded kernels may race)."""
    records: list[Verification] = []
    for kind, values in inputs.items():
        expected = reference_outputs(eager, values)
        feeds = to_numpy(values.tensors())
        for runner in runners:
            records.extend(_verify_runner(runner, kind, feeds, expected, repeats))
    return records


def _verify_runner(runner: Runner, kind: InputKind, feeds: list[np.ndarray],
                   expected: list[tuple[str, Any]], repeats: int) -> list[Verification]:
    worst: dict[str, Verification] = {}
    for _ in range(repeats):
        try:
            outputs = runner.run(feeds)
        except Exception as exc:  # a runtime refusing an input is a verification failure
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            return [Verification(runner.name, kind, name, float("inf"), float("inf"), False,
                                 error=message) for name, _ in expected]
        if len(outputs) != len(expected):
            return [Verification(runner.name, kind, name, float("inf"), float("inf"), False,
                                 error=f"{runner.name} returned {len(outputs)} outputs, eager "
                                       f"{len(expected)}") for name, _ in expected]
        for (name, reference), actual in zip(expected, outputs, strict=False):
            if not isinstance(reference, torch.Tensor):
                reference = torch.as_tensor(np.asarray(reference))
            abs_diff, rel_diff, passed = compare(reference.detach().cpu().numpy(), actual)
            previous = worst.get(name)
            if previous is None or abs_diff > previous.max_abs_diff or not passed:
                worst[name] = Verification(runner.name, kind, name, abs_diff, rel_diff,
                                           passed and (previous is None or previous.passed))
    return list(worst.values())
