"""The seed's FlashOcc, as it was: FlashOcc's original inference patterns on this package's
modules (same parameters, same checkpoints), for dynexport to diagnose.

`python -m dynexport examples/flashocc.py --variant legacy` exports `FlashOccLegacy`.
The seed patterns, one per line (keep these line numbers stable, tests point at them):

    line 55  `if len(kept) == 0:`  guard on the in-grid mask
    line 66  `if len(interval_starts) == 0:`  guard on a data-dependent length
    line 82  `int(self.grid_size[2]),`  a Python int from a constant tensor
    line 108  `def forward(self, return_loss=True, **kwargs):`  mmdet-style forward
    line 119  `torch.inverse(keyego2global.double())`  float64 pose inverse
    line 129  `occ_res.cpu().numpy().astype(np.uint8)`  numpy output

`--ranks precomputed --variant legacy` exports `forward_trt`, FlashOcc's TensorRT entry point
(`BEVDetOCCTRT.forward_ori`), which reads the grid size with `.item()` (line 138).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dynexport.custom_ops import bev_pool_v2

from .config import M0, FlashOccConfig
from .model import FlashOcc
from .view_transformer import LSSViewTransformer, ego_points


class LegacyViewTransformer(LSSViewTransformer):
    """LSS with FlashOcc's original voxel pooling: boolean filtering, data-dependent lengths,
    the grid kept as float tensors."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        grid = self.grid
        self.grid_lower_bound = torch.Tensor([grid.x[0], grid.y[0], grid.z[0]])
        self.grid_interval = torch.Tensor([grid.x[2], grid.y[2], grid.z[2]])
        self.grid_size = torch.Tensor(grid.size)

    def voxel_pooling_prepare_v2(self, coor: Tensor):
        b, n, d, h, w, _ = coor.shape
        num_points = b * n * d * h * w
        ranks_depth = torch.arange(num_points, dtype=torch.int)
        ranks_feat = torch.arange(num_points // d, dtype=torch.int).reshape(b, n, 1, h, w)
        ranks_feat = ranks_feat.expand(b, n, d, h, w).flatten()
        coor = (coor - self.grid_lower_bound.to(coor)) / self.grid_interval.to(coor)
        coor = coor.long().view(num_points, 3)
        batch_idx = torch.arange(b).reshape(b, 1).expand(b, num_points // b).reshape(-1, 1)
        coor = torch.cat((coor, batch_idx.to(coor)), 1)
        kept = ((coor[:, 0] >= 0) & (coor[:, 0] < self.grid_size[0])
                & (coor[:, 1] >= 0) & (coor[:, 1] < self.grid_size[1])
                & (coor[:, 2] >= 0) & (coor[:, 2] < self.grid_size[2]))
        if len(kept) == 0:
            return None, None, None, None, None
        coor, ranks_depth, ranks_feat = coor[kept], ranks_depth[kept], ranks_feat[kept]
        size = self.grid_size
        ranks_bev = (coor[:, 3] * (size[2] * size[1] * size[0]) + coor[:, 2] * (size[1] * size[0])
                     + coor[:, 1] * size[0] + coor[:, 0])
        order = ranks_bev.argsort()
        ranks_bev, ranks_depth, ranks_feat = ranks_bev[order], ranks_depth[order], ranks_feat[order]
        starts = torch.ones(ranks_bev.shape[0], dtype=torch.bool)
        starts[1:] = ranks_bev[1:] != ranks_bev[:-1]
        interval_starts = torch.where(starts)[0].int()
        if len(interval_starts) == 0:
            return None, None, None, None, None
        interval_lengths = torch.zeros_like(interval_starts)
        interval_lengths[:-1] = interval_starts[1:] - interval_starts[:-1]
        interval_lengths[-1] = ranks_bev.shape[0] - interval_starts[-1]
        return (ranks_bev.int(), ranks_depth.int(), ranks_feat.int(), interval_starts.int(),
                interval_lengths.int())

    def voxel_pooling_v2(self, coor: Tensor, depth: Tensor, feat: Tensor) -> Tensor:
        ranks_bev, ranks_depth, ranks_feat, interval_starts, interval_lengths = \
            self.voxel_pooling_prepare_v2(coor)
        if ranks_feat is None:  # no point inside the grid: an empty BEV
            return depth.new_zeros(depth.shape[0], feat.shape[2] * self.grid.size[2],
                                   self.grid.size[1], self.grid.size[0])
        feat = feat.permute(0, 1, 3, 4, 2)
        bev_feat_shape = (depth.shape[0],
                          int(self.grid_size[2]),
                          int(self.grid_size[1]), int(self.grid_size[0]), feat.shape[-1])
        bev_feat = bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape,
                               interval_starts, interval_lengths)
        return torch.cat(bev_feat.unbind(dim=2), 1)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        x, sensor2ego, _, intrinsics, post_rots, post_trans, bda = inputs
        b, n = x.shape[:2]
        x = self.depth_net(x.flatten(0, 1))
        depth = x[:, :self.D].softmax(dim=1)
        tran_feat = x[:, self.D:self.D + self.out_channels]
        coor = ego_points(self.frustum, sensor2ego, intrinsics, post_rots, post_trans, bda)
        return self.voxel_pooling_v2(coor, depth.unflatten(0, (b, n)),
                                     tran_feat.unflatten(0, (b, n)))


class FlashOccLegacy(FlashOcc):
    """FlashOcc called as mmdet3d calls it: `model(return_loss=False, img_inputs=[...])`."""

    def __init__(self, config: FlashOccConfig = M0):
        super().__init__(config)
        self.img_view_transformer = LegacyViewTransformer(
            config.grid, config.input_size, config.downsample, config.neck_channels,
            config.context_channels)

    def forward(self, return_loss=True, **kwargs):
        if return_loss:
            raise NotImplementedError("training is not part of this example")
        return self.forward_test(**kwargs)

    def forward_test(self, img_inputs=None, img_metas=None, **kwargs):
        return self.simple_test(img_metas, img_inputs=img_inputs)

    def prepare_inputs(self, inputs):
        imgs, sensor2egos, ego2globals, intrins, post_rots, post_trans, bda = inputs
        keyego2global = ego2globals[:, 0, ...].unsqueeze(1)
        global2keyego = torch.inverse(keyego2global.double())
        sensor2keyegos = global2keyego @ ego2globals.double() @ sensor2egos.double()
        return [imgs, sensor2keyegos.float(), ego2globals, intrins, post_rots, post_trans, bda]

    def simple_test(self, img_metas, img_inputs=None):
        img_inputs = self.prepare_inputs(img_inputs)
        x = self.image_encoder(img_inputs[0])
        bev = self.img_view_transformer([x] + img_inputs[1:7])
        occ_pred = self.occ_head(self.bev_encoder(bev))
        occ_res = occ_pred.softmax(-1).argmax(-1)
        occ_res = occ_res.cpu().numpy().astype(np.uint8)
        return list(occ_res)

    def forward_trt(self, img, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                    interval_lengths):
        vt = self.img_view_transformer
        x = vt.depth_net(self.img_neck(self.img_backbone(img)))
        depth = x[:, :vt.D].softmax(dim=1)
        tran_feat = x[:, vt.D:vt.D + vt.out_channels].permute(0, 2, 3, 1)
        shape = (1, int(vt.grid_size[2].item()), int(vt.grid_size[1].item()),
                 int(vt.grid_size[0].item()), vt.out_channels)
        bev = bev_pool_v2(depth.unsqueeze(0), tran_feat.unsqueeze(0), ranks_depth, ranks_feat,
                          ranks_bev, shape, interval_starts, interval_lengths)
        occ = self.occ_head(self.bev_encoder(bev.squeeze(2)))
        return [occ]


class FlashOccLegacyTRT(FlashOccLegacy):
    """FlashOccLegacy exported through its TensorRT entry point (`forward_trt`)."""

    def forward(self, img, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                interval_lengths):
        return self.forward_trt(img, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                                interval_lengths)
