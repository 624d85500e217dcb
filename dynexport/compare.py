"""The one place that turns (reference, candidate) into numbers: differences with their NaN and
infinity handling, label agreement with one definition, and numbers JSON can hold.
Verification, the precision stage and the accuracy stage all compare through it, so "labels
agree" means the same in every table.

Label agreement: the share of an output's labels equal to the reference's. An integer output's
labels are its values; a float output judged by its labels (the script's tolerance says
`argmax`) has the argmax over its last axis as labels; any other float output has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Differences:
    """Elementwise |reference - candidate| of two arrays of one shape, and its summary. Where
    both sides hold the same NaN or infinity the difference is 0 (a singular matrix inverts to
    inf/nan in every runtime); a non-finite value on one side only is an infinite difference."""

    diff: np.ndarray
    magnitude: np.ndarray  # |reference|, 0 where the reference is not finite
    max_abs: float
    max_rel: float  # max_abs relative to the reference's largest finite magnitude
    scale: float  # that magnitude

    @classmethod
    def of(cls, reference: np.ndarray, candidate: np.ndarray) -> Differences:
        """float32 pairs are compared in float32 (float64 copies of a large output cost more
        than the comparison itself; docs/performance.md), anything else in float64."""
        work = np.float32 if reference.dtype == candidate.dtype == np.float32 else np.float64
        ref = reference.astype(work, copy=False)
        act = candidate.astype(work, copy=False)
        magnitude = np.abs(ref)
        if np.isfinite(ref).all() and np.isfinite(act).all():
            diff = np.abs(ref - act)
        else:
            same_nonfinite = (np.isnan(ref) & np.isnan(act)) | ((ref == act) & np.isinf(ref))
            with np.errstate(invalid="ignore"):
                diff = np.nan_to_num(np.where(same_nonfinite, 0.0, np.abs(ref - act)),
                                     nan=np.inf)
            magnitude = np.where(np.isfinite(ref), magnitude, 0.0)
        max_abs = float(diff.max(initial=0.0))
        scale = float(magnitude.max(initial=0.0))
        return cls(diff, magnitude, max_abs, max_abs / scale if scale > 0 else max_abs, scale)


def labels_of(value: np.ndarray, by_argmax: bool) -> np.ndarray | None:
    """An output's labels: an integer output's values, a float output's argmax over its last
    axis where it is judged by its labels (and that axis has more than one class), else None."""
    if value.dtype.kind in "biu":
        return value
    if by_argmax and value.ndim >= 1 and value.shape[-1] > 1:
        return value.argmax(-1)
    return None


@dataclass
class LabelCount:
    """Equal labels out of all labels, pooled over any number of (reference, candidate)
    pairs of one output (the accuracy stage pools its validation samples)."""

    equal: int = 0
    total: int = 0

    def add(self, reference: Any, candidate: Any, by_argmax: bool = False) -> bool:
        """Count the pair's labels; False (nothing counted) where the output has none."""
        reference, candidate = as_array(reference), as_array(candidate)
        expected, actual = labels_of(reference, by_argmax), labels_of(candidate, by_argmax)
        if expected is None or actual is None or expected.shape != actual.shape:
            return False
        self.equal += int(np.count_nonzero(expected == actual))
        self.total += expected.size
        return True

    @property
    def share(self) -> float:
        """The share of equal labels; 1 where there were none to compare (empty outputs)."""
        return self.equal / self.total if self.total else 1.0


def label_agreement(reference: Any, candidate: Any, by_argmax: bool = False) -> float | None:
    """The share of the candidate's labels equal to the reference's, or None where the output
    has no labels (a float output not judged by them)."""
    count = LabelCount()
    return count.share if count.add(reference, candidate, by_argmax) else None


def json_number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a comparison that could not run is recorded as null."""
    return value if value is not None and math.isfinite(value) else None


def percent(share: float | None) -> str:
    """A share as a percentage that never rounds a disagreement up to 100 %."""
    if share is None:
        return ""
    return "100 %" if share >= 1 else f"{np.floor(share * 1e5) / 1e3:.3f} %"


def as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
