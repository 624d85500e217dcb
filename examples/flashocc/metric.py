"""Occupancy metrics as Occ3D defines them.

Occ3D-nuScenes' mIoU (Occ3D's and FlashOcc's `Metric_mIoU`): one confusion matrix over all
voxels of all evaluated scenes, per class IoU = TP / (TP + FP + FN), and mIoU the mean of the
per-class IoUs of classes 0-16, `free` (17) excluded, over the classes that occur (a class with
no ground-truth and no predicted voxel has IoU 0/0 and is left out of the mean, as NumPy's
nanmean does there). Occ3D evaluates only voxels visible from the cameras (its `mask_camera`,
`use_mask=True`, the setting FlashOcc reports); here a target voxel of value IGNORE (255) is
not evaluated, and the targets built by examples/flashocc world scenes mark the voxels no
camera ray reaches that way.
"""

from __future__ import annotations

import torch
from torch import Tensor

NUM_CLASSES = 18
FREE = 17
IGNORE = 255


class ConfusionMatrix:
    """Accumulates a (classes × classes) confusion matrix, rows ground truth, columns
    prediction, over any number of (prediction, target) label grids."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add one grid pair (same shape, integer labels). Voxels where `target` is IGNORE or
        `mask` is False are skipped."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from target "
                             f"shape {tuple(target.shape)}")
        keep = target.long() != IGNORE
        if mask is not None:
            keep &= mask.bool()
        p, t = prediction.long()[keep], target.long()[keep]
        if p.numel() and (p.min() < 0 or p.max() >= self.num_classes or t.min() < 0
                          or t.max() >= self.num_classes):
            raise ValueError(f"labels outside 0..{self.num_classes - 1}")
        self.matrix += torch.bincount(t * self.num_classes + p,
                                      minlength=self.num_classes ** 2).view(
                                          self.num_classes, self.num_classes)

    def iou(self) -> Tensor:
        """(classes,) float64 IoU per class; NaN for a class absent from both."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.nan)

    def miou(self) -> float:
        """Occ3D's mIoU in points (0-100): the mean IoU of the classes except `free` that
        occur in the ground truth or the predictions."""
        iou = self.iou()[:FREE]
        present = ~iou.isnan()
        return float(iou[present].mean() * 100) if present.any() else float("nan")


def miou(predictions: list[Tensor], targets: list[Tensor]) -> float:
    """mIoU in points over pairs of label grids (targets may hold IGNORE)."""
    matrix = ConfusionMatrix()
    for prediction, target in zip(predictions, targets, strict=True):
        matrix.update(prediction, target)
    return matrix.miou()


def label_agreement(a: Tensor, b: Tensor) -> float:
    """Fraction (0-1) of positions where two integer label tensors are equal."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        return 1.0
    return float((a.long() == b.long()).double().mean())
