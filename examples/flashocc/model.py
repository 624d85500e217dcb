"""FlashOcc (BEVDetOCC with BEVOCCHead2D), assembled from this package's modules.

Attribute names match FlashOCC's checkpoints: `img_backbone`, `img_neck`,
`img_view_transformer`, `img_bev_encoder_backbone`, `img_bev_encoder_neck`, `occ_head`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import CustomFPN, ResNet
from .bev_encoder import FPN_LSS, CustomResNet
from .config import M0, FlashOccConfig
from .head import BEVOCCHead2D
from .ranks import Ranks
from .view_transformer import LSSViewTransformer, sensor_to_key_ego


class FlashOcc(nn.Module):
    """Surround-view images and camera parameters → 3D occupancy.

    `forward` takes the cameras and computes the BEV pooling ranks in the graph;
    `forward_precomputed` takes the ranks instead (`flashocc.ranks.compute_ranks`).
    Both return {"occupancy": uint8 labels (B, Dx, Dy, Dz), "logits": float32
    (B, Dx, Dy, Dz, classes)}; `forward` also "point_cells": the BEV cell of every frustum
    point (`LSSViewTransformer.forward`).
    """

    def __init__(self, config: FlashOccConfig = M0):
        super().__init__()
        self.config = config
        stages = config.backbone_stage_channels
        self.img_backbone = ResNet(config.backbone_blocks, config.backbone_width,
                                   config.backbone_out_indices)
        self.img_neck = CustomFPN([stages[i] for i in config.backbone_out_indices],
                                  config.neck_channels)
        self.img_view_transformer = LSSViewTransformer(
            config.grid, config.input_size, config.downsample, config.neck_channels,
            config.context_channels, config.boundary_band)
        bev = config.bev_channels
        self.img_bev_encoder_backbone = CustomResNet(
            config.context_channels * config.grid.size[2], bev, config.bev_blocks)
        self.img_bev_encoder_neck = FPN_LSS(bev[0] + bev[-1], config.bev_neck_channels)
        self.occ_head = BEVOCCHead2D(config.bev_neck_channels, config.head_channels,
                                     config.dz, config.num_classes)

    def image_encoder(self, images: Tensor) -> Tensor:
        """(B, N, 3, H, W) → (B, N, C, fH, fW) stride-16 features."""
        b, n = images.shape[:2]
        x = self.img_neck(self.img_backbone(images.flatten(0, 1)))
        return x.unflatten(0, (b, n))

    def bev_encoder(self, bev: Tensor) -> Tensor:
        return self.img_bev_encoder_neck(self.img_bev_encoder_backbone(bev))

    def predict(self, bev: Tensor) -> dict[str, Tensor]:
        logits = self.occ_head(self.bev_encoder(bev))
        # argmax of the logits: the same labels as FlashOcc's argmax of the softmax, without
        # the rounding the softmax adds.
        return {"occupancy": logits.argmax(dim=-1).to(torch.uint8), "logits": logits}

    def forward(self, images: Tensor, sensor2ego: Tensor, ego2global: Tensor,
                intrinsics: Tensor, post_rots: Tensor, post_trans: Tensor,
                bda: Tensor) -> dict[str, Tensor]:
        sensor2keyego = sensor_to_key_ego(sensor2ego, ego2global)
        bev, point_cells = self.img_view_transformer(self.image_encoder(images), sensor2keyego,
                                                     intrinsics, post_rots, post_trans, bda)
        return {**self.predict(bev), "point_cells": point_cells}

    def forward_precomputed(self, images: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                            ranks_bev: Tensor, interval_starts: Tensor,
                            interval_lengths: Tensor) -> dict[str, Tensor]:
        bev = self.img_view_transformer.forward_precomputed(
            self.image_encoder(images), ranks_depth, ranks_feat, ranks_bev, interval_starts,
            interval_lengths)
        return self.predict(bev)


class FlashOccPrecomputed(FlashOcc):
    """FlashOcc whose `forward` takes the ranks (`forward_precomputed`): the deployment form of
    FlashOcc's TensorRT pipeline, exported with the ranks as inputs."""

    def forward(self, images: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                ranks_bev: Tensor, interval_starts: Tensor,
                interval_lengths: Tensor) -> dict[str, Tensor]:
        return self.forward_precomputed(images, ranks_depth, ranks_feat, ranks_bev,
                                        interval_starts, interval_lengths)


class FlashOccPadded(FlashOcc):
    """FlashOcc whose `forward` takes the ranks in the in-graph layout
    (`flashocc.ranks.compute_padded_ranks`): ranks as inputs, and no size that depends on the
    cameras, so `--static` gives an IR whose every shape is fixed."""

    def forward(self, images: Tensor, ranks_depth: Tensor, ranks_feat: Tensor,
                ranks_bev: Tensor, interval_starts: Tensor,
                interval_lengths: Tensor) -> dict[str, Tensor]:
        ranks = Ranks(ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)
        return self.predict(self.img_view_transformer.forward_padded(
            self.image_encoder(images), *ranks))


def init_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random weights shaped like trained ones: He-initialized convolutions and
    batch-norm statistics away from the identity, so every layer's arithmetic matters in
    verification. Returns `model`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.0, generator=generator)
                module.bias.uniform_(-0.1, 0.1, generator=generator)
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.8, 1.5, generator=generator)
    return model
