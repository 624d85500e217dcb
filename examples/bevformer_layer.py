"""A BEVFormer-style encoder layer: BEV queries attend to six cameras' multi-level image
features through multi-scale deformable attention (spatial cross-attention), then a
feed-forward block.

    python -m dynexport examples/bevformer_layer.py --out /tmp/bevformer_layer

Each BEV query is a pillar of 4 heights; its points are projected into every camera
through the lidar2img matrices given as input, and each camera samples its 4-level
feature pyramid with 8 heads × 4 points around the projected points
(`dynexport.custom_ops.ms_deform_attn.multi_scale_deformable_attn`). BEVFormer gathers
only the queries a camera sees (a data-dependent rebatch); here every camera attends for
every query and the results are averaged over the cameras that see the query, which is
the same sum without the data-dependent shapes. Sizes are small (a 20×20 BEV, 128×320
images) so that the script runs in seconds; the widths are BEVFormer's (256 channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynexport.custom_ops.ms_deform_attn import multi_scale_deformable_attn


@dataclass(frozen=True)
class LayerConfig:
    bev_size: tuple[int, int] = (20, 20)  # (H, W) of the BEV grid
    image_size: tuple[int, int] = (128, 320)  # (H, W) of the camera images
    strides: tuple[int, ...] = (8, 16, 32, 64)  # one feature level per stride
    cameras: int = 6
    embed_dims: int = 256
    heads: int = 8
    points: int = 4
    pillar_points: int = 4  # heights per BEV query; each sampling point uses one
    ffn_dims: int = 512
    pc_range: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)

    @property
    def feature_sizes(self) -> list[tuple[int, int]]:
        h, w = self.image_size
        return [(h // s, w // s) for s in self.strides]


class SpatialCrossAttention(nn.Module):
    """BEVFormer's spatial cross-attention with its MSDeformableAttention3D."""

    def __init__(self, cfg: LayerConfig):
        super().__init__()
        self.cfg = cfg
        levels, c = len(cfg.strides), cfg.embed_dims
        self.sampling_offsets = nn.Linear(c, cfg.heads * levels * cfg.points * 2)
        self.attention_weights = nn.Linear(c, cfg.heads * levels * cfg.points)
        self.value_proj = nn.Linear(c, c)
        self.output_proj = nn.Linear(c, c)
        self.cams_embeds = nn.Parameter(torch.randn(cfg.cameras, c) * 0.1)
        self.level_embeds = nn.Parameter(torch.randn(levels, c) * 0.1)
        shapes = torch.tensor(cfg.feature_sizes, dtype=torch.int64)
        areas = shapes[:, 0] * shapes[:, 1]
        self.register_buffer("spatial_shapes", shapes, persistent=False)
        self.register_buffer("level_start_index", torch.cumsum(areas, 0) - areas,
                             persistent=False)
        self.register_buffer("reference_3d", self._pillars(), persistent=False)

    def _pillars(self) -> Tensor:
        """(Hb·Wb, Z, 3) BEV cell centres at Z heights, in metres."""
        cfg = self.cfg
        (hb, wb), z = cfg.bev_size, cfg.pillar_points
        x0, y0, z0, x1, y1, z1 = cfg.pc_range
        ys = y0 + (torch.arange(hb) + 0.5) / hb * (y1 - y0)
        xs = x0 + (torch.arange(wb) + 0.5) / wb * (x1 - x0)
        zs = z0 + (torch.arange(z) + 0.5) / z * (z1 - z0)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        xy = torch.stack([grid_x, grid_y], -1).reshape(-1, 1, 2).expand(-1, z, 2)
        return torch.cat([xy, zs.view(1, z, 1).expand(hb * wb, z, 1)], -1)

    def project(self, lidar2img: Tensor) -> tuple[Tensor, Tensor]:
        """Pillar points in each camera: (bs, cams, Q, Z, 2) in [0, 1] image coordinates
        (x, y) and a (bs, cams, Q) mask of the queries a camera sees."""
        h, w = self.cfg.image_size
        points = torch.cat([self.reference_3d, torch.ones_like(self.reference_3d[..., :1])], -1)
        cam = torch.einsum("bnij,qzj->bnqzi", lidar2img, points)
        eps = 1e-5
        depth = cam[..., 2:3]
        uv = cam[..., :2] / depth.clamp(min=eps)
        uv = uv / uv.new_tensor([w, h])
        inside = ((depth[..., 0] > eps) & (uv[..., 0] > 0) & (uv[..., 0] < 1)
                  & (uv[..., 1] > 0) & (uv[..., 1] < 1))
        return uv, inside.any(-1)

    def forward(self, query: Tensor, features: list[Tensor], lidar2img: Tensor) -> Tensor:
        cfg = self.cfg
        bs, q, c = query.shape
        n, levels, heads, points = cfg.cameras, len(features), cfg.heads, cfg.points
        # value: (bs·cams, Σ h·w, heads, c / heads), camera and level embeddings added
        flat = [f.flatten(3).transpose(2, 3) + self.cams_embeds[:, None] + self.level_embeds[i]
                for i, f in enumerate(features)]
        value = self.value_proj(torch.cat(flat, 2)).view(bs * n, -1, heads, c // heads)
        # every camera attends for every query
        per_cam = query.unsqueeze(1).expand(bs, n, q, c).reshape(bs * n, q, c)
        offsets = self.sampling_offsets(per_cam).view(bs * n, q, heads, levels, points, 2)
        weights = self.attention_weights(per_cam).view(bs * n, q, heads, levels * points)
        weights = weights.softmax(-1).view(bs * n, q, heads, levels, points)
        uv, seen = self.project(lidar2img)
        normalizer = self.spatial_shapes.flip(-1).to(query.dtype)  # (W, H) per level
        # point k uses pillar height k mod Z (BEVFormer's grouping of points by anchor)
        anchors = uv.reshape(bs * n, q, 1, 1, cfg.pillar_points, 2)
        anchors = anchors.repeat(1, 1, 1, 1, points // cfg.pillar_points, 1)
        locations = anchors + offsets / normalizer[None, None, None, :, None, :]
        out = multi_scale_deformable_attn(value, self.spatial_shapes, self.level_start_index,
                                          locations, weights)
        out = out.view(bs, n, q, c) * seen.unsqueeze(-1).to(out.dtype)
        count = seen.sum(1).clamp(min=1).unsqueeze(-1).to(out.dtype)
        return self.output_proj(out.sum(1) / count)


class BEVFormerLayer(nn.Module):
    """Spatial cross-attention and FFN, each with a residual and LayerNorm (post-norm)."""

    def __init__(self, cfg: LayerConfig = LayerConfig()):
        super().__init__()
        hb, wb = cfg.bev_size
        self.bev_queries = nn.Parameter(torch.randn(hb * wb, cfg.embed_dims) * 0.5)
        self.bev_pos = nn.Parameter(torch.randn(hb * wb, cfg.embed_dims) * 0.1)
        self.cross_attention = SpatialCrossAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.embed_dims)
        self.ffn = nn.Sequential(nn.Linear(cfg.embed_dims, cfg.ffn_dims), nn.ReLU(),
                                 nn.Linear(cfg.ffn_dims, cfg.embed_dims))
        self.norm2 = nn.LayerNorm(cfg.embed_dims)

    def forward(self, feat0: Tensor, feat1: Tensor, feat2: Tensor, feat3: Tensor,
                lidar2img: Tensor) -> Tensor:
        """featN (bs, cams, C, h_N, w_N), lidar2img (bs, cams, 4, 4) → BEV (bs, Hb·Wb, C)."""
        bs = lidar2img.shape[0]
        query = (self.bev_queries + self.bev_pos).unsqueeze(0).expand(bs, -1, -1)
        x = self.norm1(query + self.cross_attention(query, [feat0, feat1, feat2, feat3],
                                                    lidar2img))
        return self.norm2(x + self.ffn(x))


def camera_rig(cfg: LayerConfig, yaw_offset: float = 0.0, height: float = 1.6) -> Tensor:
    """(cams, 4, 4) lidar2img of cameras looking outward at equal headings around the car."""
    h, w = cfg.image_size
    focal = 0.4 * w
    intrinsic = torch.tensor([[focal, 0, w / 2, 0], [0, focal, h / 2, 0], [0, 0, 1, 0],
                              [0, 0, 0, 1]], dtype=torch.float64)
    mats = []
    for k in range(cfg.cameras):
        yaw = yaw_offset + 2 * math.pi * k / cfg.cameras
        forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0], dtype=torch.float64)
        right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0], dtype=torch.float64)
        down = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
        rotation = torch.stack([right, down, forward])  # rows: camera x, y, z in ego axes
        centre = torch.tensor([0.0, 0.0, height], dtype=torch.float64)
        extrinsic = torch.eye(4, dtype=torch.float64)
        extrinsic[:3, :3] = rotation
        extrinsic[:3, 3] = -rotation @ centre
        mats.append(intrinsic @ extrinsic)
    return torch.stack(mats).float()


def make_inputs(cfg: LayerConfig, seed: int, batch: int = 1, yaw_offset: float = 0.0
                ) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    feats = tuple(torch.randn(batch, cfg.cameras, cfg.embed_dims, h, w, generator=g)
                  for h, w in cfg.feature_sizes)
    lidar2img = camera_rig(cfg, yaw_offset).unsqueeze(0).expand(batch, -1, -1, -1).clone()
    return (*feats, lidar2img)


CONFIG = LayerConfig()


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return BEVFormerLayer(CONFIG).eval()


def get_inputs():
    return make_inputs(CONFIG, seed=1)


def get_probe_inputs():
    # Other features and a rig turned by 20 degrees: other pixels are sampled.
    return make_inputs(CONFIG, seed=2, yaw_offset=math.radians(20))
