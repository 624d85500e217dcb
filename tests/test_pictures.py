"""The script's `picture(output, target)` hook (contract §2, §3): one PNG per accuracy row of the
first validation sample, linked from report.json and report.md; a picture that fails fails the
accuracy stage naming `picture`, the rows measured kept. Then FlashOcc's top view
(examples/flashocc/pictures.py) on hand-built grids and on a generated scene."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_report
from PIL import Image
from test_accuracy import ACCURACY, CLASSIFIER, validation_labels

from dynexport.measure import Accuracy
from dynexport.pipeline import execute, stages
from dynexport.stage import Options, Run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from flashocc.config import TINY, GridConfig  # noqa: E402
from flashocc.pictures import MARGIN, TITLE, panel, side_by_side, top_view  # noqa: E402

# CLASSIFIER with a picture: prediction above, target below, one pixel per label in PALETTE.
PICTURE = """
import numpy as np

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)

"""
DRAW = """def picture(output, target):
    return np.stack([PALETTE[np.asarray(output["labels"])], PALETTE[np.asarray(target)]])
"""
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)


def _script(picture: str) -> str:
    return CLASSIFIER.format(metric=ACCURACY) + PICTURE + picture


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def test_a_picture_per_row_linked_from_the_reports(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--precision", "bf16",
                          write_script(_script(DRAW)))
    assert code == 0, stdout
    rows = read_report(out)["accuracy"]["rows"]  # validated against the schema
    pictures = {(r["runtime"], r["precision"]): r.get("picture") for r in rows}
    assert pictures == {(runtime, precision): f"pictures/{runtime}-{precision}.png"
                        for runtime, precision in [("eager", "f32"), ("onnxruntime", "f32"),
                                                   ("openvino", "f32"), ("openvino", "bf16")]}
    labels, target = validation_labels()[0]
    expected = np.stack([PALETTE[labels], PALETTE[target]])
    for (_, precision), path in pictures.items():
        image = _png(out / path)
        assert image.shape == (2, 8, 3) and image.dtype == np.uint8
        if precision == "f32":
            np.testing.assert_array_equal(image, expected)
        else:  # bf16 may move a label; the target row is the target's
            np.testing.assert_array_equal(image[1], expected[1])
            assert all(any((pixel == PALETTE).all(1)) for pixel in image[0])
    markdown = (out / "report.md").read_text()
    accuracy = markdown[markdown.index("## Accuracy"):]
    for (runtime, precision), path in pictures.items():
        assert f"![{runtime} {precision}]({path})" in accuracy
    assert "Pictures of the first validation sample, one per row: pictures/" in stdout


def test_precision_auto_candidates_get_pictures(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--precision", "auto", "--accuracy-budget", "100",
                          "--to", "openvino", write_script(_script(DRAW)))
    assert code == 0, stdout
    report = read_report(out)
    made = [c["precision"] for c in report["precision"]["candidates"] if "value" in c]
    assert {"bf16", "f16"} <= set(made)
    rows = {(r["runtime"], r["precision"]): r for r in report["accuracy"]["rows"]}
    _, target = validation_labels()[0]
    for precision in ["f32", *made]:
        path = out / rows["openvino", precision]["picture"]
        np.testing.assert_array_equal(_png(path)[1], PALETTE[target])


def test_a_picture_that_raises_fails_the_accuracy_stage(cli, write_script, tmp_path):
    out = tmp_path / "out"
    broken = "def picture(output, target):\n    return output['missing']\n"
    code, _, _ = cli("--out", out, "--to", "onnx", write_script(_script(broken)))
    assert code == 1
    report = read_report(out)
    stages_ = {s["name"]: s for s in report["stages"]}
    assert stages_["verify"]["status"] == "ok" and stages_["accuracy"]["status"] == "failed"
    error = stages_["accuracy"]["error"]
    assert "`picture(output, target)`" in error and "KeyError" in error and "'missing'" in error
    assert "(H, W, 3) uint8 RGB" in error  # the fix
    assert (out / "model.onnx").is_file()
    assert not list((out / "pictures").glob("*.png"))
    # the rows measured before the stage failed still reach the report
    assert [r["runtime"] for r in report["accuracy"]["rows"]] == ["eager", "onnxruntime"]


def test_a_picture_of_the_wrong_dtype_keeps_the_measured_rows(write_script, tmp_path):
    out = tmp_path / "out"
    stale = out / "pictures" / "eager-f32.png"  # left by an earlier run
    stale.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((2, 8, 3), np.uint8)).save(stale)
    floats = "def picture(output, target):\n    return np.zeros((2, 8, 3))\n"
    state = Run(str(write_script(_script(floats))), [],
                Options(out_dir=out, targets=("onnx",)))
    execute(state, stages())
    record = next(r for r in state.records if r.name == "accuracy")
    assert record.status == "failed"
    assert "`picture(output, target)`" in record.error and "dtype float64" in record.error
    kept = state.errors["accuracy"].evidence
    assert isinstance(kept, Accuracy)
    assert [r.runtime for r in kept.rows] == ["eager", "onnxruntime"]
    assert kept.rows[1].value == pytest.approx(kept.rows[0].value)
    assert all(r.picture is None for r in kept.rows) and not stale.exists()


def test_picture_must_be_a_function(cli, write_script, tmp_path):
    source = _script("picture = 3")
    code, _, err = cli("--out", tmp_path / "out", write_script(source))
    assert code == 2 and "`picture`" in err and "not a function" in err


# --- FlashOcc's top view ------------------------------------------------------------------------

FREE, UNSEEN = 17, 255
CAR, TRUCK, ROAD, TERRAIN, PEDESTRIAN = 4, 10, 11, 14, 7
# Occ3D's colours as FlashOCC's tools/vis_occ.py lists them, and the picture's unseen grey.
RGB = {CAR: (0, 150, 245), TRUCK: (160, 32, 240), ROAD: (255, 0, 255), TERRAIN: (150, 240, 80),
       PEDESTRIAN: (255, 0, 0), FREE: (255, 255, 255), UNSEEN: (110, 110, 110)}
# 4 × 4 cells of 10 m around the ego: the car marker stays inside the four middle cells.
GRID = GridConfig(x=(-20.0, 20.0, 10.0), y=(-20.0, 20.0, 10.0), z=(-1.0, 5.4, 2.0))
SCALE = 80  # 4 cells scaled up to at least 320 pixels


def _grids() -> tuple[np.ndarray, np.ndarray]:
    """(prediction, target) of 4 × 4 × 3 voxels, all free and seen but for these columns."""
    target = np.full((4, 4, 3), FREE, np.uint8)
    target[3, 0] = (ROAD, CAR, FREE)            # front right: a car on the road
    target[0, 3] = UNSEEN                       # back left: no camera sees it
    target[2, 2] = (TERRAIN, FREE, UNSEEN)      # the top voxel unseen
    target[1, 1, 0] = TERRAIN
    prediction = np.where(target == UNSEEN, FREE, target).astype(np.uint8)
    prediction[2, 2, 2] = TRUCK                 # in the unseen voxel: not shown
    prediction[0, 3] = PEDESTRIAN               # in the unseen column: not shown
    prediction[1, 1, 1] = PEDESTRIAN            # above the terrain: shown
    return prediction, target


def _pixel(image: np.ndarray, x: int, y: int) -> tuple[int, ...]:
    """The centre pixel of cell (x, y) of a panel: forward (x) up, left (y) left."""
    return tuple(image[(3 - x) * SCALE + SCALE // 2, (3 - y) * SCALE + SCALE // 2].tolist())


def test_top_view_is_the_highest_seen_occupied_voxel():
    prediction, target = _grids()
    assert top_view(target, target)[3, 0] == CAR
    expected = np.full((4, 4), FREE)
    expected[3, 0], expected[0, 3], expected[2, 2], expected[1, 1] = CAR, UNSEEN, TERRAIN, \
        PEDESTRIAN
    np.testing.assert_array_equal(top_view(prediction, target), expected)
    np.testing.assert_array_equal(top_view(prediction)[0, 3], PEDESTRIAN)  # no target: all seen


def test_panel_colours_cells_at_their_place_and_marks_the_ego():
    prediction, target = _grids()
    image = panel(top_view(target, target), GRID)
    assert image.shape == (4 * SCALE, 4 * SCALE, 3) and image.dtype == np.uint8
    assert _pixel(image, 3, 0) == RGB[CAR]
    assert _pixel(image, 0, 3) == RGB[UNSEEN]
    assert _pixel(image, 2, 2) == RGB[TERRAIN] and _pixel(image, 1, 1) == RGB[TERRAIN]
    assert _pixel(image, 0, 0) == RGB[FREE]
    # The ego car at the centre, its front (up) filled black, its back open.
    centre = 2 * SCALE
    assert tuple(image[centre - 14, centre]) == (0, 0, 0)
    assert tuple(image[centre + 10, centre]) != (0, 0, 0)


def test_side_by_side_puts_the_prediction_left():
    prediction, target = _grids()
    image = side_by_side(prediction, target, GRID)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    top, width = TITLE + MARGIN, 4 * SCALE
    left = image[top:top + width, MARGIN:MARGIN + width]
    right = image[top:top + width, 2 * MARGIN + width:2 * MARGIN + 2 * width]
    assert _pixel(left, 1, 1) == RGB[PEDESTRIAN] and _pixel(right, 1, 1) == RGB[TERRAIN]
    assert _pixel(left, 2, 2) == RGB[TERRAIN] and _pixel(left, 0, 3) == RGB[UNSEEN]
    np.testing.assert_array_equal(right, panel(top_view(target, target), GRID))
    with pytest.raises(ValueError, match="one shape"):
        side_by_side(prediction[:2], target, GRID)


def _plain_top(labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The top view written out with loops: from the highest voxel down, the first seen
    occupied one; free if the column has a seen voxel, unseen if none."""
    dx, dy, dz = labels.shape
    top = np.empty((dx, dy), np.int64)
    for x in range(dx):
        for y in range(dy):
            top[x, y] = FREE if (target[x, y] != UNSEEN).any() else UNSEEN
            for z in reversed(range(dz)):
                if target[x, y, z] != UNSEEN and labels[x, y, z] != FREE:
                    top[x, y] = labels[x, y, z]
                    break
    return top


def test_top_view_of_a_generated_scene_and_the_script_hook():
    from dynexport.script import load_script

    script = load_script(EXAMPLES / "flashocc.py", ["--config", "tiny"])
    assert script.picture is not None
    inputs, target = script.validation()[0]
    grid = target.numpy()
    assert (grid == UNSEEN).any() and (grid == FREE).any()
    np.testing.assert_array_equal(top_view(grid, grid), _plain_top(grid, grid))
    with torch.no_grad():
        output = script.model(*inputs.args)
    labels = output["occupancy"][0].numpy()
    np.testing.assert_array_equal(top_view(labels, grid), _plain_top(labels, grid))
    image = script.picture(output, target)
    np.testing.assert_array_equal(image, side_by_side(labels, grid, TINY.grid))
