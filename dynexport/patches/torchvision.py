"""dynexport's patches for torchvision's detection code (each one's test: tests/test_patches.py).

torchvision is never imported here: a patch applies only when the user's model already
imported its module, and each replacement imports what it needs when called."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from dynexport.patches.registry import register_patch


@register_patch(
    "torchvision.batched_nms", "torchvision.ops.boxes:batched_nms", shipped=True,
    why="torchvision's batched_nms picks the per-class loop or the coordinate trick by the "
        "data-dependent number of boxes (boxes.py:86) and returns early when there are none "
        "(boxes.py:103); dynexport's batched_nms (the coordinate trick around its nms op, "
        "empty input included) has no branch")
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    from dynexport.custom_ops.nms import batched_nms as kit_batched_nms

    return kit_batched_nms(boxes, scores, idxs, float(iou_threshold))


@register_patch(
    "torchvision.multiscale_roi_align", "torchvision.ops.poolers:_multiscale_roi_align",
    shipped=True,
    why="torchvision's _multiscale_roi_align sizes its result by `len(rois)` (poolers.py:185), "
        "which turns the data-dependent number of proposals into the example's number, and "
        "writes each level's rois by data-dependent indices; the replacement pools every roi "
        "at every level and keeps, per roi, the level its mapper picks (torch.where), with no "
        "Python size")
def multiscale_roi_align(x_filtered: list[Tensor], boxes: list[Tensor], output_size: list[int],
                         sampling_ratio: int, scales: list[float] | None,
                         mapper: Callable[[list[Tensor]], Tensor] | None) -> Tensor:
    import torch
    from torchvision.ops.poolers import _convert_to_roi_format
    from torchvision.ops.roi_align import roi_align

    if scales is None or mapper is None:
        raise ValueError("scales and mapper should not be None")
    rois = _convert_to_roi_format(boxes)
    dtype = x_filtered[0].dtype

    def pooled(level: int) -> Tensor:
        return roi_align(x_filtered[level], rois, output_size=output_size,
                         spatial_scale=scales[level], sampling_ratio=sampling_ratio).to(dtype)

    result = pooled(0)
    if len(x_filtered) > 1:  # roi_align pools each roi on its own: the selected rows are exact
        levels = mapper(boxes)[:, None, None, None]
        for level in range(1, len(x_filtered)):
            result = torch.where(levels == level, pooled(level), result)
    return result


@register_patch(
    "torchvision.box_coder_decode", "torchvision.models.detection._utils:BoxCoder.decode",
    shipped=True,
    why="torchvision's BoxCoder.decode reshapes to (boxes, -1) only `if box_sum > 0` "
        "(_utils.py:176), a branch on the data-dependent number of boxes; the replacement "
        "keeps the codes' rows (one per box, as torchvision's callers pass them) and splits "
        "the columns into (-1, 4), which holds for zero boxes too")
def box_coder_decode(self: Any, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
    import torch

    concat_boxes = torch.cat(boxes, dim=0)
    torch._check(rel_codes.shape[0] == concat_boxes.shape[0],
                 lambda: "BoxCoder.decode expects one row of codes per box")
    return self.decode_single(rel_codes.flatten(1), concat_boxes).unflatten(1, (-1, 4))


@register_patch(
    "torchvision.paste_masks_in_image",
    "torchvision.models.detection.roi_heads:paste_masks_in_image", shipped=True,
    why="torchvision's paste_masks_in_image pastes one mask per detected box in a Python loop, "
        "reading each box's corners as Python ints to resize the mask and slice the image "
        "(roi_heads.py:418-434); the replacement samples every mask at every image pixel at "
        "once with interpolate's own bilinear arithmetic (source index (pixel - corner + 0.5) "
        "× mask size / box size - 0.5) and zeroes the pixels outside each box")
def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: tuple[int, int],
                         padding: int = 1) -> Tensor:
    import torch
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    masks, scale = expand_masks(masks, padding=padding)
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64)
    masks = masks[:, 0]
    size = masks.shape[-1]

    def taps(first: Tensor, last: Tensor, extent: int) -> tuple[Tensor, ...]:
        """Along one image axis, per box and pixel: the two mask rows (or columns) that
        F.interpolate(align_corners=False) blends, the weight of the second, and whether the
        pixel lies in the box (torchvision pastes pixels first..last inside the image)."""
        pixel = torch.arange(extent, device=boxes.device)[None, :]
        length = (last - first + 1).clamp(min=1)[:, None]  # the resized mask's size
        step = size / length.to(masks.dtype)
        source = (step * ((pixel - first[:, None]).to(masks.dtype) + 0.5) - 0.5).clamp(min=0)
        low = source.to(torch.int64).clamp(max=size - 1)
        high = (low + 1).clamp(max=size - 1)
        inside = (pixel >= first[:, None]) & (pixel <= last[:, None])
        return low, high, (source - low).clamp(0, 1), inside

    im_h, im_w = img_shape
    top, bottom, down, rows = taps(boxes[:, 1], boxes[:, 3], im_h)
    left, right, across, columns = taps(boxes[:, 0], boxes[:, 2], im_w)
    mask = torch.arange(masks.shape[0], device=masks.device)[:, None, None]
    down, across = down[:, :, None], across[:, None, :]

    def row(index: Tensor) -> Tensor:
        at = index[:, :, None]
        return (masks[mask, at, left[:, None, :]] * (1 - across)
                + masks[mask, at, right[:, None, :]] * across)

    pasted = row(top) * (1 - down) + row(bottom) * down
    return torch.where(rows[:, :, None] & columns[:, None, :], pasted, 0)[:, None]
