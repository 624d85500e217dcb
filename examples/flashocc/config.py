"""FlashOcc configurations: M0 and M1 as released (flashocc-r50-M0 / flashocc-r50), a tiny one
of the same structure for tests, and a small one with a trained checkpoint (checkpoints/)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class GridConfig:
    """(lower, upper, step) per axis in metres, as FlashOcc's `grid_config`."""

    x: tuple[float, float, float] = (-40.0, 40.0, 0.4)
    y: tuple[float, float, float] = (-40.0, 40.0, 0.4)
    z: tuple[float, float, float] = (-1.0, 5.4, 6.4)
    depth: tuple[float, float, float] = (1.0, 45.0, 1.0)

    @property
    def size(self) -> tuple[int, int, int]:
        """Cells along (x, y, z): (Dx, Dy, Dz)."""
        return tuple(round((hi - lo) / step) for lo, hi, step in (self.x, self.y, self.z))

    @property
    def depth_bins(self) -> int:
        lo, hi, step = self.depth
        return round((hi - lo) / step)


@dataclass(frozen=True)
class FlashOccConfig:
    """Every size the model is built from. Defaults are FlashOcc M0 (flashocc-r50-M0.py)."""

    name: str = "m0"
    num_cams: int = 6
    input_size: tuple[int, int] = (256, 704)  # (H, W) of the augmented images
    grid: GridConfig = field(default_factory=GridConfig)
    # ResNet-50 image backbone: Bottleneck blocks per stage and the stem width (64 in ResNet).
    backbone_blocks: tuple[int, ...] = (3, 4, 6, 3)
    backbone_width: int = 64
    backbone_out_indices: tuple[int, ...] = (2, 3)  # stages at strides 16 and 32
    neck_channels: int = 256  # CustomFPN output, at stride 16
    downsample: int = 16
    context_channels: int = 64  # numC_Trans: LSS context features per point
    bev_blocks: tuple[int, ...] = (2, 2, 2)  # CustomResNet BasicBlocks per stage
    bev_neck_channels: int = 128  # FPN_LSS out_channels = occupancy head in_dim
    head_channels: int = 128  # BEVOCCHead2D out_dim
    dz: int = 16  # occupancy voxels per BEV cell along z
    # Ranks in the graph: 0 is FlashOcc's hard assignment of a point to its cell. Otherwise
    # points within this many metres of a cell boundary are split between the two cells
    # (view_transformer.soft_cells), so that float32 rounding differences between runtimes
    # cannot move a point to the next cell (the example's --boundary-band).
    boundary_band: float = 0.0
    num_classes: int = 18

    @property
    def backbone_stage_channels(self) -> tuple[int, ...]:
        """Output channels of the Bottleneck stages (expansion 4): 256, 512, 1024, 2048."""
        return tuple(self.backbone_width * 4 * 2 ** i for i in range(len(self.backbone_blocks)))

    @property
    def bev_channels(self) -> tuple[int, ...]:
        """CustomResNet stage widths: 2, 4 and 8 times the context channels."""
        return tuple(self.context_channels * 2 ** (i + 1) for i in range(len(self.bev_blocks)))

    @property
    def feature_size(self) -> tuple[int, int]:
        """(fH, fW) of the image features the view transformer lifts."""
        return self.input_size[0] // self.downsample, self.input_size[1] // self.downsample

    @property
    def num_points(self) -> int:
        """Frustum points per sample: cameras × depth bins × fH × fW."""
        fh, fw = self.feature_size
        return self.num_cams * self.grid.depth_bins * fh * fw


M0 = FlashOccConfig()

# flashocc-r50: depth step 0.5 m (88 bins); FPN_LSS and the head at 256 channels.
M1 = replace(M0, name="m1", grid=replace(GridConfig(), depth=(1.0, 45.0, 0.5)),
             bev_neck_channels=256, head_channels=256)

# The same structure at toy sizes: 2 cameras, 64×192 images, a 16×16 BEV grid of 5 m cells
# (M0's ±40 m extent; a multiple of 8 so FPN_LSS's ×4 upsampling meets stage 1), 8 depth bins
# of 5 m, narrow channels.
TINY = FlashOccConfig(
    name="tiny", num_cams=2, input_size=(64, 192),
    grid=GridConfig(x=(-40.0, 40.0, 5.0), y=(-40.0, 40.0, 5.0), depth=(1.0, 41.0, 5.0)),
    backbone_blocks=(1, 1, 1, 1), backbone_width=8, neck_channels=32, context_channels=8,
    bev_neck_channels=16, head_channels=16, dz=4, num_classes=18,
)

# The same modules at widths and a resolution that train on 2 CPU cores in under 30 minutes
# (examples/flashocc/train.py, docs/flashocc.md "A trained reference model"): six cameras at
# 128×352 (test-time resize 0.22), a ±25.6 m grid of 0.8 m cells (64×64; a multiple of 8 for
# FPN_LSS) with 8 layers of 0.8 m, 36 depth bins of 1 m, ResNet stem 16 with one block per stage.
SMALL = FlashOccConfig(
    name="small", num_cams=6, input_size=(128, 352),
    grid=GridConfig(x=(-25.6, 25.6, 0.8), y=(-25.6, 25.6, 0.8), depth=(1.0, 37.0, 1.0)),
    backbone_blocks=(1, 1, 1, 1), backbone_width=16, neck_channels=64, context_channels=32,
    bev_blocks=(1, 1, 1), bev_neck_channels=64, head_channels=64, dz=8, num_classes=18,
)

CONFIGS = {config.name: config for config in (M0, M1, TINY, SMALL)}
