"""The model: PointPillars' encoder, backbone and neck (mmdet3d's `hv_pointpillars_secfpn_kitti`
layer sizes) with CenterPoint's head and decode (mmdet3d's CenterHead / CenterPointBBoxCoder).

points (N, 4) → `voxelize` (hard, mmcv's semantics) → PillarFeatureNet (the paper's nine
features: x, y, z, r, x_c, y_c, z_c, x_p, y_p; linear, batch norm, ReLU, max over the pillar)
→ scatter onto the BEV canvas → SECOND backbone + SECONDFPN neck → CenterHead (heatmap, offset,
height, size, rotation, optional velocity) → top-k decode → score and range filter →
`circle_nms`.

`padded=True` is the fixed-shape variant (for `--static` / NPU): voxelization keeps its
max_voxels rows (empty rows scatter to spare cells cut off afterwards), the filter gives the
dropped candidates a score of -inf instead of removing them (circle NMS visits them last, so
they suppress nothing that counts) and the outputs are top_k rows with a `valid` mask.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynexport.custom_ops import circle_nms, hard_voxelize, padded_circle_nms, voxelization
from dynexport.custom_ops.voxelize import grid_size


@dataclass(frozen=True)
class PointPillarsConfig:
    point_cloud_range: tuple[float, ...] = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)
    voxel_size: tuple[float, float, float] = (0.16, 0.16, 4.0)
    max_points: int = 32                      # per pillar
    max_voxels: int = 40000                   # mmdet3d's test-time value (16000 in training)
    pillar_channels: int = 64
    layer_nums: tuple[int, ...] = (3, 5, 5)
    layer_strides: tuple[int, ...] = (2, 2, 2)
    backbone_channels: tuple[int, ...] = (64, 128, 256)
    upsample_strides: tuple[int, ...] = (1, 2, 4)
    neck_channels: tuple[int, ...] = (128, 128, 128)
    head_channels: int = 64
    num_classes: int = 3                      # car, pedestrian, cyclist
    velocity: bool = False                    # nuScenes' CenterPoint adds a (vx, vy) head
    top_k: int = 500                          # CenterPointBBoxCoder's max_num
    score_threshold: float = 0.1
    post_center_range: tuple[float, ...] = (-10.0, -50.0, -10.0, 80.0, 50.0, 10.0)
    nms_radius: float = 4.0                   # circle NMS's squared distance (min_radius)
    post_max_size: int = 83

    @property
    def grid(self) -> tuple[int, int]:
        """BEV canvas (rows = y cells, columns = x cells)."""
        nx, ny, _ = grid_size(list(self.voxel_size), list(self.point_cloud_range))
        return ny, nx

    @property
    def out_size_factor(self) -> int:
        return self.layer_strides[0] // self.upsample_strides[0]


KITTI = PointPillarsConfig()
TINY = PointPillarsConfig(point_cloud_range=(0.0, -12.8, -3.0, 25.6, 12.8, 1.0),
                          voxel_size=(0.4, 0.4, 4.0), max_points=16, max_voxels=3000,
                          pillar_channels=16, layer_nums=(1, 1, 1),
                          backbone_channels=(16, 32, 64), neck_channels=(16, 16, 16),
                          head_channels=16, top_k=100,
                          post_center_range=(-5.0, -20.0, -10.0, 30.0, 20.0, 10.0))
CONFIGS = {"kitti": KITTI, "tiny": TINY}


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU())


class PillarFeatureNet(nn.Module):
    """mmdet3d's PillarFeatureNet with the paper's features (no z_p, no distance)."""

    def __init__(self, config: PointPillarsConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(9, config.pillar_channels, bias=False)
        self.norm = nn.BatchNorm1d(config.pillar_channels, eps=1e-3, momentum=0.01)

    def forward(self, voxels: Tensor, coors: Tensor, num_points: Tensor) -> Tensor:
        vx, vy, _ = self.config.voxel_size
        x_min, y_min = self.config.point_cloud_range[:2]
        count = num_points.clamp(min=1).to(voxels.dtype)[:, None, None]  # padded rows: 0
        cluster = voxels[:, :, :3] - voxels[:, :, :3].sum(1, keepdim=True) / count
        centre_x = coors[:, 2].to(voxels.dtype)[:, None] * vx + (vx / 2 + x_min)
        centre_y = coors[:, 1].to(voxels.dtype)[:, None] * vy + (vy / 2 + y_min)
        offset = torch.stack([voxels[:, :, 0] - centre_x, voxels[:, :, 1] - centre_y], 2)
        features = torch.cat([voxels, cluster, offset], 2)
        slots = torch.arange(voxels.shape[1], device=voxels.device)
        features = features * (slots[None, :] < num_points[:, None]).to(voxels.dtype)[:, :, None]
        if self.training:   # batch statistics (init_weights measures them)
            hidden = self.norm(self.linear(features).transpose(1, 2)).transpose(1, 2)
        else:
            # The batch norm folded into the linear layer, as deployments do: BatchNorm1d
            # on (V, C, P) makes torch.export guard on V * P * C == 0 for the data-dependent
            # pillar count V (a tensor_to_python hazard); an affine map has no such check.
            scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
            hidden = features @ (self.linear.weight * scale[:, None]).t() \
                + (self.norm.bias - self.norm.running_mean * scale)
        return torch.relu(hidden).amax(1)                                 # (V, P, C) → (V, C)


class Backbone(nn.Module):
    """SECOND (mmdet3d): a strided conv and layer_num convs per stage."""

    def __init__(self, config: PointPillarsConfig):
        super().__init__()
        cin = config.pillar_channels
        self.stages = nn.ModuleList()
        for layers, stride, cout in zip(config.layer_nums, config.layer_strides,
                                        config.backbone_channels, strict=True):
            self.stages.append(nn.Sequential(conv_bn_relu(cin, cout, stride),
                                             *(conv_bn_relu(cout, cout) for _ in range(layers))))
            cin = cout

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class Neck(nn.Module):
    """SECONDFPN (mmdet3d): each stage upsampled by a transposed conv, then concatenated."""

    def __init__(self, config: PointPillarsConfig):
        super().__init__()
        self.ups = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(cin, cout, stride, stride, bias=False),
                          nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU())
            for cin, cout, stride in zip(config.backbone_channels, config.neck_channels,
                                         config.upsample_strides, strict=True))

    def forward(self, features: list[Tensor]) -> Tensor:
        return torch.cat([up(x) for up, x in zip(self.ups, features, strict=True)], 1)


class CenterHead(nn.Module):
    """mmdet3d's CenterHead, one task: a shared conv, then two convs per output."""

    def __init__(self, config: PointPillarsConfig):
        super().__init__()
        c = config.head_channels
        self.shared = conv_bn_relu(sum(config.neck_channels), c)
        outputs = {"heatmap": config.num_classes, "reg": 2, "height": 1, "dim": 3, "rot": 2}
        if config.velocity:
            outputs["vel"] = 2
        self.heads = nn.ModuleDict(
            {name: nn.Sequential(conv_bn_relu(c, c), nn.Conv2d(c, n, 3, 1, 1))
             for name, n in outputs.items()})
        nn.init.constant_(self.heads["heatmap"][-1].bias, -2.19)   # CenterPoint's prior 0.1

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.shared(x)
        return {name: head(x) for name, head in self.heads.items()}


class PointPillars(nn.Module):
    def __init__(self, config: PointPillarsConfig, padded: bool = False):
        super().__init__()
        self.config, self.padded = config, padded
        self.pillars = PillarFeatureNet(config)
        self.backbone = Backbone(config)
        self.neck = Neck(config)
        self.head = CenterHead(config)

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        return self.decode(self.head(self.neck(self.backbone(self.bev(points)))))

    def bev(self, points: Tensor) -> Tensor:
        """Voxelize, encode each pillar and scatter it onto the (1, C, ny, nx) canvas."""
        c = self.config
        arguments = (points, list(c.voxel_size), list(c.point_cloud_range), c.max_points,
                     c.max_voxels)
        if self.padded:
            voxels, coors, num_points, _ = hard_voxelize(*arguments)
        else:
            voxels, coors, num_points = voxelization(*arguments)
        features = self.pillars(voxels, coors, num_points)
        ny, nx = c.grid
        cells = coors[:, 1].to(torch.int64) * nx + coors[:, 2].to(torch.int64)
        spare = 0
        if self.padded:  # empty rows go to distinct spare cells, cut off below
            spare = c.max_voxels
            cells = torch.where(num_points > 0, cells,
                                ny * nx + torch.arange(c.max_voxels, device=points.device))
        canvas = features.new_zeros(ny * nx + spare, features.shape[1]).index_put((cells,),
                                                                                  features)
        return canvas[:ny * nx].t().reshape(1, features.shape[1], ny, nx)

    def decode(self, heads: dict[str, Tensor]) -> dict[str, Tensor]:
        """CenterPointBBoxCoder: top-k peaks of the heatmap, their regressions gathered, boxes
        (x, y, z, l, w, h, yaw[, vx, vy]) in lidar metres; then the filter and circle NMS."""
        c = self.config
        heatmap = torch.sigmoid(heads["heatmap"][0])                   # (classes, H, W)
        classes, height, width = heatmap.shape
        scores, index = heatmap.reshape(-1).topk(min(c.top_k, classes * height * width))
        labels = index // (height * width)
        pixel = index % (height * width)

        def at(name: str) -> Tensor:                                   # (K, channels)
            values = heads[name][0]
            return values.reshape(values.shape[0], -1)[:, pixel].t()

        reg = at("reg")
        scale = c.out_size_factor
        x = ((pixel % width).to(scores.dtype) + reg[:, 0]) * (scale * c.voxel_size[0]) \
            + c.point_cloud_range[0]
        y = ((pixel // width).to(scores.dtype) + reg[:, 1]) * (scale * c.voxel_size[1]) \
            + c.point_cloud_range[1]
        rot = at("rot")
        parts = [x[:, None], y[:, None], at("height"), torch.exp(at("dim")),
                 torch.atan2(rot[:, :1], rot[:, 1:])]
        if c.velocity:
            parts.append(at("vel"))
        boxes = torch.cat(parts, 1)
        low = torch.tensor(c.post_center_range[:3])
        high = torch.tensor(c.post_center_range[3:])
        inside = ((boxes[:, :3] >= low) & (boxes[:, :3] <= high)).all(1)
        keep = (scores > c.score_threshold) & inside
        if self.padded:
            dets = torch.stack([x, y, torch.where(keep, scores, float("-inf"))], 1)
            kept = padded_circle_nms(dets, c.nms_radius, c.post_max_size)
            rows = kept.clamp(min=0)
            valid = (kept >= 0) & keep[rows]
            return {"boxes": boxes[rows] * valid[:, None], "scores": scores[rows] * valid,
                    "labels": labels[rows] * valid, "valid": valid}
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        kept = circle_nms(torch.stack([boxes[:, 0], boxes[:, 1], scores], 1), c.nms_radius,
                          c.post_max_size)
        return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}


def init_weights(model: PointPillars, clouds: list[Tensor], seed: int = 0) -> PointPillars:
    """Seeded weights (torch's default initialisation), batch-norm statistics measured on
    `clouds` so that every layer works at unit scale as in a trained network; eval mode."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            module.reset_parameters()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
            module.momentum = None                 # a cumulative average over the clouds
    nn.init.constant_(model.head.heads["heatmap"][-1].bias, -2.19)
    model.train()
    with torch.no_grad():
        for points in clouds:
            model.head(model.neck(model.backbone(model.bev(points))))
    return model.eval()
