"""Top views of occupancy grids in Occ3D's class colours, the prediction beside the ground truth.

Each BEV cell shows the class of the highest occupied (not `free`) voxel of its column, as
FlashOCC's occupancy visualisation draws it (tools/vis_occ.py, `occ2img`). Voxels the target marks
unseen (IGNORE, 255: no camera ray reaches them, Occ3D's mask_camera) are left out of both views,
so the two panels show exactly the voxels the metric evaluates: a column with no seen voxel is
drawn in UNSEEN_COLOUR, a column whose seen voxels are all free in `free`'s white.

Orientation: forward (+x) is up, left (+y) is left, as seen from above; the ego car is marked at
its place in the grid (the origin), its front up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .config import GridConfig
from .metric import FREE, IGNORE
from .world import CLASS_NAMES

if TYPE_CHECKING:  # Pillow draws the pictures; imported where they are drawn
    from PIL import ImageDraw, ImageFont

# Occ3D-nuScenes' class colours (RGB, by class id 0-17) as FlashOCC's visualisation uses them:
# `color_map` in github.com/Yzichen/FlashOCC tools/vis_occ.py (its alpha column left out).
OCC3D_COLOURS = np.array([
    (0, 0, 0),        # others
    (255, 120, 50),   # barrier
    (255, 192, 203),  # bicycle
    (255, 255, 0),    # bus
    (0, 150, 245),    # car
    (0, 255, 255),    # construction_vehicle
    (200, 180, 0),    # motorcycle
    (255, 0, 0),      # pedestrian
    (255, 240, 150),  # traffic_cone
    (135, 60, 0),     # trailer
    (160, 32, 240),   # truck
    (255, 0, 255),    # driveable_surface
    (175, 0, 75),     # other_flat
    (75, 0, 75),      # sidewalk
    (150, 240, 80),   # terrain
    (230, 230, 250),  # manmade
    (0, 175, 0),      # vegetation
    (255, 255, 255),  # free
], dtype=np.uint8)
UNSEEN_COLOUR = np.array((110, 110, 110), dtype=np.uint8)  # in no palette entry
EGO_COLOUR = (0, 0, 0)
EGO_SIZE = (4.6, 1.9)  # length along x, width along y, metres (a passenger car)

PANEL = 320  # pixels a panel's longer side is scaled up to, at least (nearest neighbour)
MARGIN = 8
TITLE = 16  # pixels above the panels for their labels
SWATCH = 10


def top_view(labels: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """(Dx, Dy) class per BEV cell of a (Dx, Dy, Dz) label grid: the class of the highest
    occupied voxel of the column among those `target` does not mark IGNORE; FREE when every
    seen voxel is free; IGNORE when the column has no seen voxel."""
    labels = np.asarray(labels).astype(np.int64)
    seen = np.ones(labels.shape, dtype=bool) if target is None else np.asarray(target) != IGNORE
    occupied = seen & (labels != FREE)
    depth = labels.shape[-1]
    highest = depth - 1 - np.argmax(occupied[..., ::-1], axis=-1)  # top occupied voxel's z
    top = np.take_along_axis(labels, highest[..., None], axis=-1)[..., 0]
    empty = np.where(seen.any(-1), FREE, IGNORE)
    return np.where(occupied.any(-1), top, empty)


def colours(top: np.ndarray) -> np.ndarray:
    """(Dx, Dy, 3) uint8 RGB of a top view, IGNORE in UNSEEN_COLOUR, indexed like the grid."""
    rgb = OCC3D_COLOURS[np.clip(top, 0, FREE)]
    rgb[top == IGNORE] = UNSEEN_COLOUR
    return rgb


def panel(top: np.ndarray, grid: GridConfig) -> np.ndarray:
    """The top view as an image seen from above (forward up, left left), scaled up by whole
    pixels per cell, the ego car drawn at the origin."""
    from PIL import Image, ImageDraw

    scale = _scale(top.shape)
    image = colours(top)[::-1, ::-1]  # row 0: the largest x (front); column 0: the largest y
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    picture = Image.fromarray(np.ascontiguousarray(image))
    _draw_ego(ImageDraw.Draw(picture), top.shape, grid, scale)
    return np.asarray(picture)


def side_by_side(prediction: np.ndarray, target: np.ndarray, grid: GridConfig) -> np.ndarray:
    """(H, W, 3) uint8: the prediction's top view (left) and the target's (right), labelled,
    both without the voxels the target marks unseen, with a legend of the classes shown."""
    from PIL import Image, ImageDraw, ImageFont

    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape or prediction.ndim != 3:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} must be "
                         "(Dx, Dy, Dz) label grids of one shape")
    tops = [top_view(prediction, target), top_view(target, target)]
    left, right = (panel(top, grid) for top in tops)
    height, width = left.shape[:2]
    shown = [c for c in range(FREE + 1) if any((top == c).any() for top in tops)]
    unseen = any((top == IGNORE).any() for top in tops)
    legend = _legend_rows(shown, unseen, 2 * width + MARGIN)
    canvas = Image.new("RGB", (2 * width + 3 * MARGIN,
                               TITLE + height + 2 * MARGIN + legend * (SWATCH + 4)),
                       (255, 255, 255))
    canvas.paste(Image.fromarray(left), (MARGIN, TITLE + MARGIN))
    canvas.paste(Image.fromarray(right), (2 * MARGIN + width, TITLE + MARGIN))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((MARGIN, 2), "prediction", fill=(0, 0, 0), font=font)
    draw.text((2 * MARGIN + width, 2), "ground truth", fill=(0, 0, 0), font=font)
    _draw_legend(draw, font, shown, unseen, TITLE + height + 2 * MARGIN, 2 * width + MARGIN)
    return np.asarray(canvas)


def _scale(shape: tuple[int, ...]) -> int:
    return max(1, -(-PANEL // max(shape[:2])))


def _draw_ego(draw: ImageDraw.ImageDraw, shape: tuple[int, ...], grid: GridConfig,
              scale: int) -> None:
    """The ego car's footprint at the origin: outlined, its front third filled."""
    (x_lo, _, x_step), (y_lo, _, y_step) = grid.x, grid.y
    # The origin in pixels of the flipped image: rows count down from the largest x.
    row = (shape[0] - (0.0 - x_lo) / x_step) * scale
    col = (shape[1] - (0.0 - y_lo) / y_step) * scale
    half_l = max(EGO_SIZE[0] / x_step * scale / 2, 3)
    half_w = max(EGO_SIZE[1] / y_step * scale / 2, 2)
    box = (col - half_w, row - half_l, col + half_w, row + half_l)
    draw.rectangle(box, outline=EGO_COLOUR, width=2)
    draw.rectangle((box[0], box[1], box[2], box[1] + 2 * half_l / 3), fill=EGO_COLOUR)


def _entries(shown: list[int], unseen: bool) -> list[tuple[str, tuple[int, ...]]]:
    entries = [(CLASS_NAMES[c], tuple(OCC3D_COLOURS[c].tolist())) for c in shown]
    return entries + ([("unseen", tuple(UNSEEN_COLOUR.tolist()))] if unseen else [])


_ENTRY = 112  # legend pixels per entry


def _legend_rows(shown: list[int], unseen: bool, width: int) -> int:
    per_row = max(1, width // _ENTRY)
    count = len(_entries(shown, unseen))
    return -(-count // per_row)


def _draw_legend(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, shown: list[int],
                 unseen: bool, top: int, width: int) -> None:
    per_row = max(1, width // _ENTRY)
    for index, (name, colour) in enumerate(_entries(shown, unseen)):
        x = MARGIN + (index % per_row) * _ENTRY
        y = top + (index // per_row) * (SWATCH + 4)
        draw.rectangle((x, y, x + SWATCH - 1, y + SWATCH - 1), fill=colour, outline=(0, 0, 0))
        draw.text((x + SWATCH + 3, y - 1), name, fill=(0, 0, 0), font=font)
