"""A procedural 3-D street world with ground truth, rendered into FlashOcc's cameras.

Every scene is a list of oriented boxes in the key ego frame (x forward, y left, z up, the road
surface at z = 0), each with an Occ3D-nuScenes class: ground slabs (road, sidewalks, other flat
ground, terrain; they reach down to the grid's floor, z = -1 m), buildings and vegetation behind
the sidewalks, vehicles on the road, pedestrians on the sidewalks, barriers and cones at the
kerb. Composite objects (a car's body and cabin, a truck's cab and cargo box, a tree's trunk and
crown) are several boxes of one class. From the boxes:

* `render` ray-casts the six cameras of a `camera_rig` (their intrinsics, mounts, ego poses and
  image augmentation post_rots / post_trans) in torch: slab intersection of every pixel's ray with
  every box, per-class colours shaded by surface normal and distance, with texture noise, then
  FlashOcc's image normalisation. The per-pixel depth is the camera-frame z of the hit (what
  BEVDet's depth supervision uses; 0 where a ray hits nothing).
* `voxelize` labels the occupancy grid of a config: 4 × 4 × 4 sample points per voxel, the voxel
  takes the class most of its samples fall in (objects' samples count 4 times, so thin objects on
  a ground slab keep their voxel), `FREE` (17) where none does.
* `camera_mask` marks the voxels a camera ray passes through or ends in (Occ3D's mask_camera).

Everything is deterministic per seed. Class ids are Occ3D-nuScenes' (CLASS_NAMES).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import camera_rig
from .config import FlashOccConfig
from .view_transformer import sensor_to_key_ego

# Occ3D-nuScenes' 18 classes (occ3d-nus: 0 others … 16 vegetation, 17 free).
CLASS_NAMES = (
    "others", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle",
    "pedestrian", "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat",
    "sidewalk", "terrain", "manmade", "vegetation", "free",
)
(OTHERS, BARRIER, BICYCLE, BUS, CAR, CONSTRUCTION_VEHICLE, MOTORCYCLE, PEDESTRIAN, TRAFFIC_CONE,
 TRAILER, TRUCK, DRIVEABLE_SURFACE, OTHER_FLAT, SIDEWALK, TERRAIN, MANMADE, VEGETATION,
 FREE) = range(18)
GROUND_CLASSES = (DRIVEABLE_SURFACE, OTHER_FLAT, SIDEWALK, TERRAIN)

# Base colour (R, G, B in 0..255) of each class's surfaces.
CLASS_COLOURS = torch.tensor([
    (128, 128, 128), (200, 200, 60), (220, 30, 130), (250, 150, 30), (40, 80, 210),
    (180, 120, 40), (160, 40, 200), (230, 40, 40), (255, 110, 0), (120, 90, 60),
    (100, 40, 140), (85, 85, 90), (150, 120, 150), (185, 175, 165), (115, 150, 60),
    (170, 130, 100), (30, 120, 30), (0, 0, 0)], dtype=torch.float32)
SKY = torch.tensor((150.0, 190.0, 235.0))

# FlashOcc's (BEVDet's) image normalisation: `mmlabNormalize` in PrepareImageInputs, mmcv's
# imnormalize with these mean/std and to_rgb=True, applied to the RGB array PIL loads, so the
# channels are swapped to B, G, R before the per-channel mean/std.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)

CAMERA_KEYS = ("sensor2ego", "ego2global", "intrinsics", "post_rots", "post_trans", "bda")


@dataclass
class Boxes:
    """K oriented boxes: centre (K, 3), size (K, 3) (length along the heading, width, height),
    yaw (K,) radians about z, class id (K,) int64, colour jitter (K,) in [-1, 1]."""

    centre: Tensor
    size: Tensor
    yaw: Tensor
    label: Tensor
    shade: Tensor

    def __len__(self) -> int:
        return self.label.numel()


@dataclass
class Scene:
    """One rendered scene: network inputs and ground truth (batch dimension 1 on the cameras,
    as `camera_rig` returns them)."""

    images: Tensor  # (1, N, 3, H, W) float32, normalised as FlashOcc's pipeline
    cameras: dict[str, Tensor]  # CAMERA_KEYS → (1, ...) float32
    occupancy: Tensor  # (Dx, Dy, Dz) uint8 class ids, FREE for empty space
    mask: Tensor  # (Dx, Dy, Dz) bool, voxels a camera sees (Occ3D's mask_camera)
    depth: Tensor  # (N, H, W) float32 camera-frame depth in metres, 0 where nothing is hit
    boxes: Boxes

    def inputs(self) -> tuple[Tensor, ...]:
        """(images, *cameras) in the order FlashOcc.forward takes them."""
        return (self.images, *(self.cameras[key] for key in CAMERA_KEYS))


class _Builder:
    """Collects boxes while a layout is generated."""

    def __init__(self, generator: torch.Generator):
        self.g = generator
        self.rows: list[tuple[float, ...]] = []

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=self.g, dtype=torch.float64).item()

    def chance(self, p: float) -> bool:
        return self.uniform(0.0, 1.0) < p

    def add(self, label: int, x: float, y: float, z0: float, length: float, width: float,
            height: float, yaw: float = 0.0) -> None:
        """A box standing on z0 (its bottom face), centred at (x, y)."""
        self.rows.append((x, y, z0 + height / 2, length, width, height, yaw, label,
                          self.uniform(-1.0, 1.0)))

    def boxes(self, angle: float, offset: float) -> Boxes:
        """All boxes, laid out in road coordinates (s along the road, t across it), moved into
        the ego frame: the road turned by `angle` and shifted by `offset` across itself."""
        t = torch.tensor(self.rows, dtype=torch.float64)
        s, across = t[:, 0], t[:, 1] + offset
        c, sn = math.cos(angle), math.sin(angle)
        centre = torch.stack((c * s - sn * across, sn * s + c * across, t[:, 2]), dim=1)
        return Boxes(centre.float(), t[:, 3:6].float(), (t[:, 6] + angle).float(),
                     t[:, 7].long(), t[:, 8].float())


def _vehicle(b: _Builder, s: float, t: float, yaw: float) -> None:
    """A car (body and cabin), a truck (cab and cargo box) or a bus, on the road at (s, t)."""
    kind = b.uniform(0.0, 1.0)
    c, sn = math.cos(yaw), math.sin(yaw)
    if kind < 0.7:
        length, width = b.uniform(4.0, 5.0), b.uniform(1.7, 2.0)
        b.add(CAR, s, t, 0.2, length, width, 0.8, yaw)
        b.add(CAR, s - 0.1 * length * c, t - 0.1 * length * sn, 1.0, 0.55 * length,
              width - 0.15, b.uniform(0.5, 0.7), yaw)
    elif kind < 0.87:
        length, width = b.uniform(6.0, 9.0), b.uniform(2.3, 2.6)
        cab = 2.0
        front = (length - cab) / 2
        b.add(TRUCK, s + front * c, t + front * sn, 0.3, cab, width, 2.8, yaw)
        back = -cab / 2 - 0.1
        b.add(TRUCK, s + back * c, t + back * sn, 0.5, length - cab - 0.2, width,
              b.uniform(2.8, 3.6), yaw)
    else:
        b.add(BUS, s, t, 0.3, b.uniform(10.0, 12.5), 2.6, 3.0, yaw)


def _side(b: _Builder, sign: float, edge: float, cross: tuple[float, float] | None) -> None:
    """One side of the road: kerb-side objects, a sidewalk, a strip of flat ground or terrain,
    then buildings or vegetation. `edge` is the road's edge (|t|), `cross` a crossing road's
    (s range) the sidewalk and the row of buildings leave free."""
    walk = b.uniform(2.0, 4.0)
    strip = b.uniform(1.0, 6.0)
    strip_class = OTHER_FLAT if b.chance(0.4) else TERRAIN
    segments = [(-60.0, 60.0)] if cross is None else [(-60.0, cross[0]), (cross[1], 60.0)]
    for lo, hi in segments:
        if hi - lo < 1.0:
            continue
        mid, length = (lo + hi) / 2, hi - lo
        b.add(SIDEWALK, mid, sign * (edge + walk / 2), -1.0, length, walk, 1.15)
        if strip_class == OTHER_FLAT:
            b.add(OTHER_FLAT, mid, sign * (edge + walk + strip / 2), -1.0, length, strip,
                  1.05)
        # Buildings or vegetation behind.
        s = lo + b.uniform(0.0, 4.0)
        back = edge + walk + strip
        while s < hi - 3.0:
            length = min(b.uniform(6.0, 22.0), hi - s)
            if b.chance(0.7):
                depth, height = b.uniform(6.0, 14.0), b.uniform(4.0, 14.0)
                b.add(MANMADE, s + length / 2, sign * (back + b.uniform(0.0, 3.0) + depth / 2),
                      0.0, length, depth, height)
            else:  # a hedge or a wood
                depth = b.uniform(2.0, 8.0)
                b.add(VEGETATION, s + length / 2, sign * (back + depth / 2), 0.0, length, depth,
                      b.uniform(1.0, 4.5))
            s += length + b.uniform(0.0, 6.0)
        # Trees, pedestrians and kerb-side objects along the sidewalk.
        s = lo + b.uniform(0.0, 8.0)
        while s < hi - 1.0:
            if b.chance(0.5):
                t = sign * (edge + walk - 0.6)
                b.add(VEGETATION, s, t, 0.0, 0.35, 0.35, 2.4)
                crown = b.uniform(2.0, 3.5)
                b.add(VEGETATION, s, t, 2.2, crown, crown, b.uniform(1.8, 3.0))
            s += b.uniform(6.0, 14.0)
        for _ in range(int(b.uniform(0.0, 5.0) * length / 40)):
            b.add(PEDESTRIAN, b.uniform(lo, hi), sign * (edge + b.uniform(0.4, walk - 0.4)), 0.15,
                  b.uniform(0.5, 0.7), b.uniform(0.5, 0.7), b.uniform(1.6, 1.9),
                  b.uniform(-math.pi, math.pi))
        if b.chance(0.5):
            s = b.uniform(lo, hi)
            b.add(BICYCLE, s, sign * (edge + b.uniform(0.5, walk - 0.5)), 0.15, 1.7, 0.5, 1.1,
                  b.uniform(-0.3, 0.3))
            if b.chance(0.5):  # its rider
                b.add(BICYCLE, s, sign * (edge + 1.0), 1.25, 0.5, 0.45, 0.7)
        if b.chance(0.45):  # a row of barriers or cones along the kerb
            s, cones = b.uniform(lo, hi - 8.0), b.chance(0.5)
            for _ in range(int(b.uniform(3.0, 7.0))):
                if cones:
                    b.add(TRAFFIC_CONE, s, sign * (edge - 0.4), 0.0, 0.4, 0.4, 0.75)
                    s += b.uniform(1.5, 2.5)
                else:
                    b.add(BARRIER, s, sign * (edge - 0.3), 0.0, 2.0, 0.45, 0.95)
                    s += 2.1


def generate_world(seed: int) -> Boxes:
    """The boxes of scene `seed` in the key ego frame; deterministic per seed."""
    b = _Builder(torch.Generator().manual_seed(seed))
    angle = math.radians(b.uniform(-12.0, 12.0))
    lanes = 2 if b.chance(0.6) else 3
    width = lanes * b.uniform(3.2, 3.8)
    # The ego car drives on the road: the road's centre line is offset across it.
    offset = b.uniform(-0.35, 0.35) * width
    b.add(TERRAIN, 0.0, 0.0, -1.0, 140.0, 140.0, 0.95)
    b.add(DRIVEABLE_SURFACE, 0.0, 0.0, -1.0, 140.0, width, 1.0)
    cross = None
    if b.chance(0.5):
        at, cross_width = b.uniform(-20.0, 20.0), b.uniform(7.0, 11.0)
        if abs(at) > 7.0:  # not under the ego car
            cross = (at - cross_width / 2, at + cross_width / 2)
            b.add(DRIVEABLE_SURFACE, at, 0.0, -1.0, cross_width, 140.0, 1.0)
    for sign in (1.0, -1.0):
        _side(b, sign, width / 2, cross)
    # Traffic in the lanes and parked at the kerb, away from the ego car.
    lane_width = width / lanes
    for lane in range(lanes):
        t = -width / 2 + lane_width * (lane + 0.5)
        s = b.uniform(-60.0, -50.0)
        while s < 60.0:
            ego_t = t + offset
            if abs(ego_t) > 2.2 or not -8.0 < s < 10.0:
                _vehicle(b, s, t, b.uniform(-0.08, 0.08) + (math.pi if lane < lanes / 2 - 0.5
                                                            and b.chance(0.8) else 0.0))
            s += b.uniform(8.0, 26.0)
    return b.boxes(angle, offset)


# --- ray casting ---------------------------------------------------------------------------------

def _local(points: Tensor, boxes: Boxes) -> Tensor:
    """(..., K, 3) points in each box's frame (origin at the centre, x along its heading)."""
    c, s = torch.cos(boxes.yaw), torch.sin(boxes.yaw)
    d = points - boxes.centre
    return torch.stack((c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1],
                        d[..., 2]), dim=-1)


def cast_rays(origin: Tensor, dirs: Tensor, boxes: Boxes, chunk: int = 16384
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest hit of rays origin + t·dirs (t > 0) with the boxes, by slab intersection.

    origin (3,), dirs (R, 3). Returns t (R,) (inf: no hit), the index of the box hit (R,) and
    the hit surface's normal (R, 3) in the ego frame."""
    k = len(boxes)
    if k == 0:
        r = dirs.shape[0]
        return torch.full((r,), torch.inf), torch.zeros(r, dtype=torch.int64), torch.zeros(r, 3)
    c, s = torch.cos(boxes.yaw), torch.sin(boxes.yaw)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    # Ego → box frame rotations, (3, K·3) so that one matrix product turns every ray into
    # every box's frame.
    rot = torch.stack((torch.stack((c, s, zero), 1), torch.stack((-s, c, zero), 1),
                       torch.stack((zero, zero, one), 1)), 1)  # (K, 3, 3)
    to_local = rot.permute(2, 0, 1).reshape(3, k * 3)
    o = (rot @ (origin - boxes.centre).unsqueeze(-1)).squeeze(-1)  # (K, 3)
    lo, hi = -boxes.size / 2 - o, boxes.size / 2 - o
    ts, idx, normals = [], [], []
    for start in range(0, dirs.shape[0], chunk):
        d = (dirs[start:start + chunk] @ to_local).view(-1, k, 3)
        inv = 1.0 / torch.where(d.abs() < 1e-9, 1e-9, d)
        t1, t2 = lo * inv, hi * inv
        t_in, axis = torch.minimum(t1, t2).max(dim=-1)
        t_out = torch.maximum(t1, t2).amin(dim=-1)
        t_in = torch.where((t_in <= t_out) & (t_in > 1e-4), t_in, torch.inf)
        best_t, best = t_in.min(dim=-1)
        ax = axis.gather(1, best.unsqueeze(1))
        along = d[torch.arange(d.shape[0]), best].gather(1, ax)
        local_n = torch.zeros(d.shape[0], 3).scatter_(1, ax, -torch.sign(along))
        normals.append((rot[best].transpose(1, 2) @ local_n.unsqueeze(-1)).squeeze(-1))
        ts.append(best_t)
        idx.append(best)
    return torch.cat(ts), torch.cat(idx), torch.cat(normals)


def pixel_rays(cameras: dict[str, Tensor], height: int, width: int
               ) -> tuple[Tensor, Tensor]:
    """Rays of every pixel of the augmented images, in the key ego frame: origins (N, 3) and
    directions (N, H·W, 3) scaled so that t is the camera-frame depth (z = 1 in the camera).

    A pixel (u, v) of the network input is at source pixel post_rots⁻¹ ((u, v, 1) −
    post_trans) (the augmentation FlashOcc's frustum undoes); pixel centres at integer
    coordinates, as FlashOcc's frustum."""
    sensor2keyego = sensor_to_key_ego(cameras["sensor2ego"], cameras["ego2global"])[0].double()
    intrinsics = cameras["intrinsics"][0].double()
    post_rots, post_trans = cameras["post_rots"][0].double(), cameras["post_trans"][0].double()
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                          torch.arange(width, dtype=torch.float64), indexing="ij")
    pixels = torch.stack((u.flatten(), v.flatten(), torch.ones(height * width,
                                                               dtype=torch.float64)), 1)
    source = (torch.linalg.inv(post_rots).unsqueeze(1)
              @ (pixels - post_trans.unsqueeze(1)).unsqueeze(-1)).squeeze(-1)
    source[..., 2] = 1.0
    camera = (torch.linalg.inv(intrinsics).unsqueeze(1) @ source.unsqueeze(-1)).squeeze(-1)
    dirs = (sensor2keyego[:, None, :3, :3] @ camera.unsqueeze(-1)).squeeze(-1)
    return sensor2keyego[:, :3, 3].float(), dirs.float()


def _noise(points: Tensor, scale: float) -> Tensor:
    """Deterministic value noise in [0, 1) of 3-D points: a hash of the cell of size 1/scale."""
    cell = torch.floor(points * scale)
    h = torch.sin(cell @ torch.tensor([12.9898, 78.233, 37.719])) * 43758.5453
    return h - torch.floor(h)


def shade(t: Tensor, index: Tensor, normal: Tensor, origin: Tensor, dirs: Tensor,
          boxes: Boxes) -> Tensor:
    """(R, 3) RGB in 0..255: class colour × (ambient + sun) × per-object tint, texture noise
    at two scales, haze with distance; sky where nothing is hit."""
    hit = torch.isfinite(t)
    t0 = torch.where(hit, t, 0.0)
    points = origin + t0.unsqueeze(1) * dirs
    label = boxes.label[index]
    sun = torch.tensor([0.35, 0.25, 0.90])
    sun = sun / sun.norm()
    light = 0.45 + 0.55 * (normal @ sun).clamp(min=0.0)
    tint = 1.0 + 0.12 * boxes.shade[index]
    texture = 0.85 + 0.2 * _noise(points, 2.0) + 0.1 * _noise(points, 8.0)
    colour = CLASS_COLOURS[label] * (light * tint * texture).unsqueeze(1)
    distance = t0 * dirs.norm(dim=1)
    haze = (1.0 - torch.exp(-distance / 60.0)).unsqueeze(1)
    colour = colour * (1 - haze) + SKY * haze
    elevation = (dirs[:, 2] / dirs.norm(dim=1)).clamp(-1, 1).unsqueeze(1)
    sky = SKY * (0.85 + 0.3 * elevation)
    return torch.where(hit.unsqueeze(1), colour, sky).clamp(0.0, 255.0)


def _in_view(corners: Tensor, dirs: Tensor) -> Tensor:
    """(K,) bool: boxes (corners relative to the camera, (K, 8, 3)) that may be hit by a ray
    of `dirs` (R, 3): some corner in front of the camera, and the corners' horizontal angles
    and elevations overlapping the rays' (conservative: boxes straddling the camera's plane
    are kept)."""
    axis = dirs.mean(dim=0)
    axis = axis / axis.norm()
    front = corners @ axis
    # A frame (axis, right, up) of the camera's viewing direction, for angles.
    up = torch.tensor([0.0, 0.0, 1.0])
    right = torch.linalg.cross(axis, up)
    right = right / right.norm()
    up = torch.linalg.cross(right, axis)
    ray_front = dirs @ axis
    ray_x, ray_y = (dirs @ right) / ray_front, (dirs @ up) / ray_front
    ahead = (front > 0.1).all(dim=1)
    box_x = (corners @ right) / front.clamp(min=0.1)
    box_y = (corners @ up) / front.clamp(min=0.1)
    overlap = ((box_x.amax(1) >= ray_x.min()) & (box_x.amin(1) <= ray_x.max())
               & (box_y.amax(1) >= ray_y.min()) & (box_y.amin(1) <= ray_y.max()))
    return torch.where(ahead, overlap, (front > 0.1).any(dim=1))


def normalise(rgb: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in 0..255 → FlashOcc's network input (BGR order, mmcv mean/std)."""
    bgr = rgb.flip(-3)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (bgr - mean) / std


def render(boxes: Boxes, cameras: dict[str, Tensor], height: int, width: int, step: int = 1
           ) -> tuple[Tensor, Tensor]:
    """Normalised images (1, N, 3, H, W) and camera-frame depth (N, H, W) (0: no hit).

    `step` > 1 casts the rays of every step-th pixel only (exact rays for those pixels) and
    fills the image in between bilinearly (the depth by the nearest cast pixel): step² times
    cheaper, for training data."""
    origins, dirs = pixel_rays(cameras, height, width)
    n = origins.shape[0]
    rows, cols = -(-height // step), -(-width // step)
    dirs = dirs.view(n, height, width, 3)[:, ::step, ::step].reshape(n, -1, 3)
    images, depths = [], []
    corners = _corners(boxes)
    for origin, d in zip(origins, dirs, strict=True):
        seen = _in_view(corners - origin, d)
        visible = Boxes(*(getattr(boxes, f)[seen] for f in ("centre", "size", "yaw", "label",
                                                             "shade")))
        t, index, normal = cast_rays(origin, d, visible)
        index = seen.nonzero().squeeze(1)[index] if len(visible) else index
        rgb = shade(t, index, normal, origin, d, boxes)
        images.append(rgb.T.reshape(3, rows, cols))
        depths.append(torch.where(torch.isfinite(t), t, 0.0).reshape(rows, cols))
    images, depth = torch.stack(images), torch.stack(depths)
    if step > 1:
        # Cast pixel (i, j) sits at full-resolution pixel (i·step, j·step).
        size = ((rows - 1) * step + 1, (cols - 1) * step + 1)
        images = torch.nn.functional.interpolate(images, size=size, mode="bilinear",
                                                 align_corners=True)
        images = torch.nn.functional.pad(images, (0, width - size[1], 0, height - size[0]),
                                         mode="replicate")
        depth = depth.repeat_interleave(step, 1).repeat_interleave(step, 2)
        depth = torch.roll(depth, (-(step // 2), -(step // 2)), (1, 2))[:, :height, :width]
    return normalise(images).unsqueeze(0), depth


# --- ground truth --------------------------------------------------------------------------------

def voxel_centres(config: FlashOccConfig) -> Tensor:
    """(Dx, Dy, Dz, 3) centres of the occupancy voxels in the ego frame."""
    g = config.grid
    dx, dy, _ = g.size
    dz = config.dz
    step_z = (g.z[1] - g.z[0]) / dz
    xs = g.x[0] + g.x[2] * (torch.arange(dx, dtype=torch.float64) + 0.5)
    ys = g.y[0] + g.y[2] * (torch.arange(dy, dtype=torch.float64) + 0.5)
    zs = g.z[0] + step_z * (torch.arange(dz, dtype=torch.float64) + 0.5)
    return torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1).float()


def voxel_size(config: FlashOccConfig) -> tuple[float, float, float]:
    g = config.grid
    return g.x[2], g.y[2], (g.z[1] - g.z[0]) / config.dz


def _corners(boxes: Boxes) -> Tensor:
    """(K, 8, 3) corners of the boxes in the ego frame."""
    signs = torch.tensor([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5)
                          for sz in (-0.5, 0.5)])
    local = signs * boxes.size.unsqueeze(1)
    c, s = torch.cos(boxes.yaw).unsqueeze(1), torch.sin(boxes.yaw).unsqueeze(1)
    return boxes.centre.unsqueeze(1) + torch.stack(
        (c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1],
         local[..., 2]), dim=-1)


def voxelize(boxes: Boxes, config: FlashOccConfig, samples: int = 4) -> Tensor:
    """(Dx, Dy, Dz) uint8 labels: per voxel the class most of its samples³ sample points fall
    in (a sample inside several boxes takes the last box's class; samples of a non-ground
    class count 4 times), FREE where no sample is in a box."""
    g = config.grid
    dims = (g.size[0] * samples, g.size[1] * samples, config.dz * samples)
    lower = torch.tensor([g.x[0], g.y[0], g.z[0]])
    step = torch.tensor(voxel_size(config)) / samples
    labels = torch.full(dims, FREE, dtype=torch.uint8)
    corners = _corners(boxes)
    lo = torch.floor((corners.amin(dim=1) - lower) / step - 0.5).long() + 1
    hi = torch.floor((corners.amax(dim=1) - lower) / step - 0.5).long()
    size = torch.tensor(dims)
    lo, hi = lo.clamp(min=0), torch.minimum(hi, size - 1)
    cos, sin = torch.cos(boxes.yaw), torch.sin(boxes.yaw)
    painted = set()
    for k in range(len(boxes)):  # in order: later boxes paint over earlier ones
        if (hi[k] < lo[k]).any():
            continue
        painted.add(int(boxes.label[k]))
        # Boxes turn about z only: inside = inside the footprint and within the z range.
        ix, iy = torch.meshgrid(*(torch.arange(int(lo[k, a]), int(hi[k, a]) + 1)
                                  for a in range(2)), indexing="ij")
        x = lower[0] + (ix + 0.5) * step[0] - boxes.centre[k, 0]
        y = lower[1] + (iy + 0.5) * step[1] - boxes.centre[k, 1]
        inside = (((cos[k] * x + sin[k] * y).abs() <= boxes.size[k, 0] / 2)
                  & ((-sin[k] * x + cos[k] * y).abs() <= boxes.size[k, 1] / 2))
        labels[ix[inside], iy[inside], int(lo[k, 2]):int(hi[k, 2]) + 1] = int(boxes.label[k])
    blocks = labels.view(g.size[0], samples, g.size[1], samples, config.dz, samples)
    votes = torch.zeros(FREE, g.size[0], g.size[1], config.dz)
    for c in painted:
        weight = 1.0 if c in GROUND_CLASSES else 4.0
        votes[c] = (blocks == c).sum(dim=(1, 3, 5)).float() * weight
    best = votes.max(dim=0)
    return torch.where(best.values > 0, best.indices, FREE).to(torch.uint8)


def camera_mask(cameras: dict[str, Tensor], depth: Tensor, config: FlashOccConfig,
                stride: int = 4) -> Tensor:
    """(Dx, Dy, Dz) bool: voxels some camera ray (every `stride`-th pixel) passes through
    before its hit or ends in (the hit plus a quarter voxel), as Occ3D's mask_camera."""
    n, height, width = depth.shape
    origins, dirs = pixel_rays(cameras, height, width)
    dirs = dirs.view(n, height, width, 3)[:, ::stride, ::stride].reshape(n, -1, 3)
    d = depth[:, ::stride, ::stride].reshape(n, -1)
    vx, vy, vz = voxel_size(config)
    reach = math.hypot(*(max(abs(lo), abs(hi)) for lo, hi, _ in (config.grid.x, config.grid.y)))
    # Steps of half the smallest voxel side, in camera depth (dirs has z = 1 in camera).
    length = dirs.norm(dim=-1)
    far = torch.where(d > 0, d + min(vx, vy, vz) / 4 / length, reach / length)
    steps = torch.arange(0.0, float(far.max() * length.max()) + 1.0, min(vx, vy, vz) / 2)
    g = config.grid
    lower = torch.tensor([g.x[0], g.y[0], g.z[0]])
    cell = torch.tensor([vx, vy, vz])
    dims = torch.tensor([*g.size[:2], config.dz])
    mask = torch.zeros(int(dims.prod()), dtype=torch.bool)
    for i in range(n):
        t = steps.view(1, -1) / length[i].view(-1, 1)  # (R, S) camera depth of each step
        keep = t <= far[i].view(-1, 1)
        points = origins[i] + t.unsqueeze(-1) * dirs[i].unsqueeze(1)
        idx = torch.floor((points[keep] - lower) / cell).long()
        inside = ((idx >= 0) & (idx < dims)).all(dim=1)
        idx = idx[inside]
        mask[(idx[:, 0] * dims[1] + idx[:, 1]) * dims[2] + idx[:, 2]] = True
    return mask.view(*g.size[:2], config.dz)


def make_scene(config: FlashOccConfig, seed: int, step: int = 1) -> Scene:
    """Scene `seed`: the world, the rig of `camera_rig(config, seed)` (test-time augmentation),
    the rendered images and depth (`render`'s `step`), the occupancy grid and the camera
    mask."""
    rig = camera_rig(config, seed=seed)
    cameras = {key: rig[key] for key in CAMERA_KEYS}
    boxes = generate_world(seed)
    height, width = config.input_size
    images, depth = render(boxes, cameras, height, width, step)
    return Scene(images=images, cameras=cameras, occupancy=voxelize(boxes, config),
                 mask=camera_mask(cameras, depth, config), depth=depth, boxes=boxes)
