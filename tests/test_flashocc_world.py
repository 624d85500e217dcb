"""The procedural world (examples/flashocc/world.py) and the Occ3D metric (metric.py): a box at
a known position lands in the right voxels and pixels (computed here from the camera matrices
with NumPy), scenes are deterministic per seed, and mIoU matches a hand-computed case."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from flashocc.cameras import camera_rig  # noqa: E402
from flashocc.config import SMALL, TINY  # noqa: E402
from flashocc.metric import IGNORE, ConfusionMatrix, label_agreement, miou  # noqa: E402
from flashocc.world import (  # noqa: E402
    CAMERA_KEYS,
    CAR,
    CLASS_COLOURS,
    DRIVEABLE_SURFACE,
    FREE,
    MANMADE,
    MEAN,
    STD,
    TRUCK,
    Boxes,
    camera_mask,
    make_scene,
    render,
    voxelize,
)


def boxes(*rows):
    """Boxes from (x, y, z, length, width, height, yaw, label) rows, no colour jitter."""
    t = torch.tensor(rows, dtype=torch.float32)
    return Boxes(t[:, :3], t[:, 3:6], t[:, 6], t[:, 7].long(), torch.zeros(len(rows)))


def test_axis_aligned_box_fills_exactly_its_voxels():
    # SMALL: x, y from -25.6 in 0.8 m cells, z from -1.0 in 0.8 m layers. The box spans
    # x 8.0..10.4 (cells 42-44), y -4.0..-2.4 (cells 27-28), z -0.2..1.4 (layers 1-2).
    occ = voxelize(boxes((9.2, -3.2, 0.6, 2.4, 1.6, 1.6, 0.0, CAR)), SMALL)
    expected = np.full((64, 64, 8), FREE, dtype=np.uint8)
    expected[42:45, 27:29, 1:3] = CAR
    np.testing.assert_array_equal(occ.numpy(), expected)


def test_rotated_box_voxels_by_centre_distance():
    yaw = math.radians(30.0)
    centre, half = np.array([-6.0, 11.0, 1.5]), np.array([2.5, 1.0, 1.0])
    occ = voxelize(boxes((*centre, *(2 * half), yaw, TRUCK)), SMALL).numpy()
    xs = -25.6 + 0.8 * (np.arange(64) + 0.5)
    zs = -1.0 + 0.8 * (np.arange(8) + 0.5)
    x, y, z = np.meshgrid(xs, xs, zs, indexing="ij")
    d = np.stack((x, y, z), -1) - centre
    local = np.stack((math.cos(yaw) * d[..., 0] + math.sin(yaw) * d[..., 1],
                      -math.sin(yaw) * d[..., 0] + math.cos(yaw) * d[..., 1], d[..., 2]), -1)
    # Margin: half a voxel diagonal. Voxels whose centre is that deep inside are all inside;
    # voxels that far outside have no sample inside.
    margin = 0.8 * math.sqrt(3) / 2
    depth_inside = (half - np.abs(local)).min(-1)
    assert (occ[depth_inside > margin] == TRUCK).all()
    assert (occ[depth_inside < -margin] == FREE).all()
    assert (occ != FREE).sum() > 0 and set(np.unique(occ)) == {TRUCK, FREE}


def _key_ego_camera(rig, cam):
    """(camera → key ego 4×4, K, post_rot, post_tran) in float64, from the rig's matrices."""
    r = {k: v[0].double().numpy() for k, v in rig.items() if k != "images"}
    key_global = r["ego2global"][0]
    cam_to_key = np.linalg.inv(key_global) @ r["ego2global"][cam] @ r["sensor2ego"][cam]
    return cam_to_key, r["intrinsics"][cam], r["post_rots"][cam], r["post_trans"][cam]


def _project(point, rig, cam):
    """Augmented-image pixel (u, v) and camera depth of an ego point."""
    cam_to_key, k, post_rot, post_tran = _key_ego_camera(rig, cam)
    p = np.linalg.inv(cam_to_key) @ np.append(point, 1.0)
    pixel = k @ (p[:3] / p[2])
    return (post_rot @ pixel + post_tran)[:2], p[2]


@pytest.mark.parametrize("cam, point", [(1, (14.0, 0.5, 1.2)), (4, (-12.0, -1.0, 1.0))])
def test_box_appears_in_the_pixels_of_the_camera_that_sees_it(cam, point):
    """A 2 m cube: the pixel its near face's centre projects to sees it at that face's depth,
    in its class colour; pixels well off it see sky; cameras facing away see nothing."""
    rig = camera_rig(SMALL, seed=5)
    cameras = {key: rig[key] for key in CAMERA_KEYS}
    centre = np.array(point)
    near_face = centre - np.sign(centre[0]) * np.array([1.0, 0.0, 0.0])
    scene = boxes((*centre, 2.0, 2.0, 2.0, 0.0, CAR))
    images, depth = render(scene, cameras, *SMALL.input_size)
    (u, v), z = _project(near_face, rig, cam)
    row, col = int(round(v)), int(round(u))
    assert 0 <= row < SMALL.input_size[0] and 0 <= col < SMALL.input_size[1]
    # Flat face, tilted by at most a few degrees: depth within a centimetre-ish of the point's.
    assert depth[cam, row, col].item() == pytest.approx(z, abs=0.05)
    # The face is lit with some ambient share of the car colour: blue dominates (BGR order).
    rgb = (images[0, cam, :, row, col] * torch.tensor(STD) + torch.tensor(MEAN)).flip(0)
    assert rgb.argmax() == CLASS_COLOURS[CAR].argmax()
    # Where the box's projected outline is far away: nothing hit.
    corners = [centre + np.array([sx, sy, sz]) for sx in (-1, 1) for sy in (-1, 1)
               for sz in (-1, 1)]
    uv = np.array([_project(c, rig, cam)[0] for c in corners])
    hit = depth[cam] > 0
    rows, cols = torch.nonzero(hit, as_tuple=True)
    assert cols.min() >= uv[:, 0].min() - 1.5 and cols.max() <= uv[:, 0].max() + 1.5
    assert rows.min() >= uv[:, 1].min() - 1.5 and rows.max() <= uv[:, 1].max() + 1.5
    # Every pixel strictly inside the outline's bounding box around the face centre is hit.
    assert hit[row - 2:row + 3, col - 2:col + 3].all()
    opposite = {1: 4, 4: 1}[cam]  # front ↔ back: sees nothing
    assert not (depth[opposite] > 0).any()


def test_camera_mask_sees_in_front_of_a_wall_not_behind_it():
    rig = camera_rig(SMALL, seed=5)
    cameras = {key: rig[key] for key in CAMERA_KEYS}
    # A road everywhere and a wall 10 m ahead, 4 m high, across the whole grid.
    scene = boxes((0.0, 0.0, -0.5, 60.0, 60.0, 1.0, 0.0, DRIVEABLE_SURFACE),
                  (11.0, 0.0, 2.0, 2.0, 60.0, 6.0, 0.0, MANMADE))
    _, depth = render(scene, cameras, *SMALL.input_size, step=2)
    mask = camera_mask(cameras, depth, SMALL)
    # Cells along x at y = 0 (cell 32), layer 2 (0.6..1.4 m): free in front, the wall's face,
    # nothing behind it.
    # The front camera (1.5 m high) sees that layer from x ≈ 4 m on (its lower field edge).
    column = mask[:, 32, 2]
    assert column[38:44].all()  # x 4.8..9.6 m: in front of the wall
    assert column[44]  # x 9.6..10.4: holds the face at 10 m, where the rays end
    assert not column[45:].any()  # behind the face: no ray gets there


def test_scenes_are_deterministic_per_seed():
    a, b, c = make_scene(TINY, 7, step=2), make_scene(TINY, 7, step=2), make_scene(TINY, 8, step=2)
    for key in ("images", "occupancy", "mask", "depth"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert not torch.equal(a.occupancy, c.occupancy)
    assert a.images.shape == (1, 2, 3, *TINY.input_size)
    assert a.occupancy.shape == (*TINY.grid.size[:2], TINY.dz)
    assert a.occupancy.dtype == torch.uint8 and int(a.occupancy.max()) <= FREE
    labels = set(a.occupancy.unique().tolist())
    assert DRIVEABLE_SURFACE in labels and FREE in labels


def test_miou_hand_computed():
    target = torch.tensor([4, 4, 17, 11, IGNORE, 13, 13])
    pred = torch.tensor([4, 17, 17, 11, 4, 13, 4])
    # car: TP 1, FN 1 (→ free), FP 1 (a sidewalk voxel) → 1/3; driveable 1/1; sidewalk: TP 1,
    # FN 1 → 1/2; free (left out of the mean): TP 1, FP 1 → 1/2. The ignored voxel counts
    # nowhere. mIoU = (1/3 + 1 + 1/2) / 3.
    assert miou([pred], [target]) == pytest.approx((1 / 3 + 1 + 1 / 2) / 3 * 100)
    matrix = ConfusionMatrix()
    matrix.update(pred[:4], target[:4])
    matrix.update(pred[4:], target[4:])
    iou = matrix.iou()
    assert iou[4].item() == pytest.approx(1 / 3) and iou[17].item() == pytest.approx(0.5)
    assert math.isnan(iou[1].item())  # absent from both: out of the mean
    assert matrix.miou() == pytest.approx((1 / 3 + 1 + 1 / 2) / 3 * 100)
    assert label_agreement(pred, target) == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="shape"):
        matrix.update(pred, target[:3])
