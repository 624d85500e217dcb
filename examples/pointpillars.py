"""PointPillars with a CenterPoint head, end to end: lidar points with a dynamic count →
voxelization → pillars → BEV → backbone → CenterHead decode → circle NMS, exported to ONNX and
OpenVINO IR and verified on two clouds of different sizes. The model is `pointpillars/` next to
this script (see docs/pointpillars.md).

    python -m dynexport examples/pointpillars.py                        # KITTI layer sizes
    python -m dynexport examples/pointpillars.py --config tiny          # the same, small
    python -m dynexport --static examples/pointpillars.py --points padded   # fixed shapes (NPU)

Weights are random (seeded) with batch-norm statistics measured on generated clouds; the clouds
are generated (a ground plane and box-shaped objects, pointpillars/cloud.py).
"""

import argparse
import sys

import torch
from pointpillars import CONFIGS, PointPillars, init_weights, pad_points, point_cloud


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="examples/pointpillars.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="kitti",
                        help="kitti: mmdet3d's PointPillars KITTI layer sizes (default); "
                             "tiny: for tests")
    parser.add_argument("--points", choices=("dynamic", "padded"), default="dynamic",
                        help="dynamic: any number of points, detections of a data-dependent "
                             "count (default); padded: the cloud padded to a fixed size with "
                             "points outside the range, fixed-size outputs with a `valid` mask "
                             "(with dynexport --static: an IR without dynamic shapes)")
    return parser.parse_args(argv)


ARGS = _arguments(sys.argv[1:])
CONFIG = CONFIGS[ARGS.config]
PADDED = ARGS.points == "padded"
# points in the example and the probe; padded mode pads both to CAPACITY
SIZES = {"kitti": (18000, 24000), "tiny": (2500, 3400)}[ARGS.config]
CAPACITY = {"kitti": 32768, "tiny": 4096}[ARGS.config]

if not PADDED:
    dynamic_shapes = ({0: torch.export.Dim("points", min=2, max=2 ** 20)},)


def _cloud(points: int, seed: int) -> tuple[torch.Tensor]:
    cloud = point_cloud(CONFIG, points, seed)
    return (pad_points(cloud, CAPACITY, CONFIG) if PADDED else cloud,)


def get_model() -> torch.nn.Module:
    calibration = [point_cloud(CONFIG, SIZES[0], seed) for seed in (100, 101)]
    return init_weights(PointPillars(CONFIG, padded=PADDED), calibration, seed=0)


def get_inputs():
    return _cloud(SIZES[0], seed=1)


def get_probe_inputs():
    """Another scene with a third more points (in padded mode, the same padded size)."""
    return _cloud(SIZES[1], seed=2)
