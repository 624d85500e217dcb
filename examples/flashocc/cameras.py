"""Camera rigs for examples and tests: nuScenes-like surround cameras, ego poses and the
image/BEV augmentation matrices FlashOcc's data pipeline produces.

Values are constructed, not copied from a dataset: six cameras around a car at nuScenes'
mounting positions and headings, with nuScenes' 1600×900 intrinsics, jittered per seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import FlashOccConfig

SOURCE_SIZE = (900, 1600)  # (H, W) of the camera images before augmentation

# (name, heading in degrees from the ego x axis, mount x, y, z in metres, focal in pixels)
CAMERAS = (
    ("CAM_FRONT_LEFT", 55.0, 1.52, 0.49, 1.51, 1257.0),
    ("CAM_FRONT", 0.0, 1.70, 0.02, 1.51, 1266.0),
    ("CAM_FRONT_RIGHT", -55.0, 1.55, -0.49, 1.50, 1260.0),
    ("CAM_BACK_LEFT", 110.0, 1.04, 0.81, 1.56, 1256.0),
    ("CAM_BACK", 180.0, 0.03, 0.00, 1.57, 809.0),
    ("CAM_BACK_RIGHT", -110.0, 1.06, -0.81, 1.56, 1259.0),
)


@dataclass(frozen=True)
class Augmentation:
    """Image augmentation (resize, rotate about the image centre, crop) and BEV augmentation
    (yaw rotation, flips), as FlashOcc's PrepareImageInputs / LoadAnnotationsBEVDepth."""

    resize: float | None = None  # None: the test-time resize, input width / source width
    rotate_deg: float = 0.0
    crop_x: float = 0.0
    crop_y: float | None = None  # None: the test-time crop, the bottom of the resized image
    bda_rotate_deg: float = 0.0
    bda_flip_x: bool = False
    bda_flip_y: bool = False


TEST_TIME = Augmentation()


def _rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> Tensor:
    """Rotation matrix of intrinsic z-y-x angles (radians), float64."""
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    rz = torch.tensor([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]], dtype=torch.float64)
    ry = torch.tensor([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]], dtype=torch.float64)
    rx = torch.tensor([[1, 0, 0], [0, cr, -sr], [0, sr, cr]], dtype=torch.float64)
    return rz @ ry @ rx


# Camera axes (x right, y down, z forward) in the frame of a car heading along x.
_CAMERA_TO_FORWARD = torch.tensor([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=torch.float64)


def _pose(rotation: Tensor, translation: Tensor) -> Tensor:
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3], pose[:3, 3] = rotation, translation
    return pose


def camera_rig(config: FlashOccConfig, seed: int, augmentation: Augmentation = TEST_TIME,
               batch: int = 1) -> dict[str, Tensor]:
    """Seeded images and camera tensors, float32, keyed like FlashOcc's img_inputs:
    images (B, N, 3, H, W), sensor2ego and ego2global (B, N, 4, 4), intrinsics and post_rots
    (B, N, 3, 3), post_trans (B, N, 3), bda (B, 3, 3). Cameras beyond the config's count are
    dropped (the tiny config keeps the front and back cameras)."""
    g = torch.Generator().manual_seed(seed)

    def jitter(scale: float) -> float:
        return scale * (2 * torch.rand((), generator=g, dtype=torch.float64).item() - 1)

    cameras = CAMERAS if config.num_cams == 6 else (CAMERAS[1], CAMERAS[4])[:config.num_cams]
    height, width = config.input_size
    post_rot, post_tran = _image_augmentation(augmentation, height, width)
    samples = []
    for _ in range(batch):
        # The ego pose somewhere in a city map, moving; each camera fires a little later.
        heading = jitter(math.pi)
        position = torch.tensor([1000 + jitter(700), 1000 + jitter(700), jitter(0.5)],
                                dtype=torch.float64)
        speed = 8.0 + jitter(4.0)
        sensor2ego, ego2global, intrinsics = [], [], []
        for i, (_, yaw, x, y, z, focal) in enumerate(cameras):
            rotation = _rotation(math.radians(yaw + jitter(1.0)), math.radians(jitter(1.0)),
                                 math.radians(jitter(1.0))) @ _CAMERA_TO_FORWARD
            mount = torch.tensor([x + jitter(0.02), y + jitter(0.02), z + jitter(0.02)],
                                 dtype=torch.float64)
            sensor2ego.append(_pose(rotation, mount))
            dt = 0.008 * i
            step = speed * dt * torch.tensor([math.cos(heading), math.sin(heading), 0.0],
                                             dtype=torch.float64)
            ego2global.append(_pose(_rotation(heading + 0.002 * i), position + step))
            f = focal * (1 + jitter(0.01))
            intrinsics.append(torch.tensor(
                [[f, 0, SOURCE_SIZE[1] / 2 + jitter(15)], [0, f, SOURCE_SIZE[0] / 2 + jitter(15)],
                 [0, 0, 1]], dtype=torch.float64))
        samples.append((torch.stack(sensor2ego), torch.stack(ego2global), torch.stack(intrinsics)))
    n = len(cameras)
    rig = {
        "images": torch.randn(batch, n, 3, height, width, generator=g),
        "sensor2ego": torch.stack([s[0] for s in samples]),
        "ego2global": torch.stack([s[1] for s in samples]),
        "intrinsics": torch.stack([s[2] for s in samples]),
        "post_rots": post_rot.expand(batch, n, 3, 3),
        "post_trans": post_tran.expand(batch, n, 3),
        "bda": _bda(augmentation).expand(batch, 3, 3),
    }
    return {key: value.to(torch.float32).contiguous() for key, value in rig.items()}


def _image_augmentation(aug: Augmentation, height: int, width: int) -> tuple[Tensor, Tensor]:
    """(post_rot (3, 3), post_tran (3,)): augmented pixel = post_rot @ source pixel + post_tran.

    Resize, then crop, then rotate about the centre of the crop."""
    resize = aug.resize if aug.resize is not None else width / SOURCE_SIZE[1]
    crop_y = aug.crop_y if aug.crop_y is not None else SOURCE_SIZE[0] * resize - height
    angle = math.radians(aug.rotate_deg)
    rot = torch.tensor([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]],
                       dtype=torch.float64)
    centre = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    linear = rot * resize
    shift = rot @ (-torch.tensor([aug.crop_x, crop_y], dtype=torch.float64) - centre) + centre
    post_rot = torch.eye(3, dtype=torch.float64)
    post_rot[:2, :2] = linear
    post_tran = torch.zeros(3, dtype=torch.float64)
    post_tran[:2] = shift
    return post_rot, post_tran


def _bda(aug: Augmentation) -> Tensor:
    angle = math.radians(aug.bda_rotate_deg)
    flip = torch.diag(torch.tensor([-1.0 if aug.bda_flip_x else 1.0,
                                    -1.0 if aug.bda_flip_y else 1.0, 1.0], dtype=torch.float64))
    return flip @ _rotation(angle)


def probe_augmentation(config: FlashOccConfig) -> Augmentation:
    """Another test-time-like augmentation: 6 % larger, rotated 3°, cropped off-centre, and a
    BEV augmentation (10° yaw, x flip), so other frustum points fall inside the grid."""
    height, width = config.input_size
    resize = 1.06 * width / SOURCE_SIZE[1]
    return Augmentation(resize=resize, rotate_deg=3.0,
                        crop_x=0.3 * (SOURCE_SIZE[1] * resize - width),
                        crop_y=0.8 * (SOURCE_SIZE[0] * resize - height),
                        bda_rotate_deg=10.0, bda_flip_x=True)
