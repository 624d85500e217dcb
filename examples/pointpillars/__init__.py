"""PointPillars (Lang et al., 2019) with a CenterPoint head (Yin et al., 2021) in plain torch.nn,
export-ready: dynexport's `voxelize` (mmcv's hard voxelization) → pillar feature net → BEV
scatter → SECOND backbone + FPN neck → CenterHead decode → dynexport's `circle_nms`. Generated
point clouds for examples. See docs/pointpillars.md."""

from .cloud import pad_points, point_cloud
from .model import CONFIGS, KITTI, TINY, PointPillars, PointPillarsConfig, init_weights

__all__ = ["CONFIGS", "KITTI", "TINY", "PointPillars", "PointPillarsConfig", "init_weights",
           "pad_points", "point_cloud"]
