"""Count FlashOcc's floating-point operations with torch's FlopCounterMode.

    cd examples && python -m flashocc.flops m0 m1

FlopCounterMode counts 2 FLOPs per multiply-add of convolutions and matrix products (and
nothing else); FlashOcc's published figures (154.1 G for M0) come from mmcv's
`get_model_complexity_info`, which counts one per multiply-add ("FLOPs" that are MACs) and
adds batch norm, activations, pooling and upsampling. `FlopCount.gmacs` is the comparable one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .cameras import camera_rig
from .config import CONFIGS, FlashOccConfig
from .model import FlashOcc, init_weights


@dataclass(frozen=True)
class FlopCount:
    """Per-sample FLOPs of one configuration, in total and per top-level module."""

    config: str
    flops: int
    by_module: dict[str, int]

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        """Multiply-adds, the unit of FlashOcc's published "FLOPs"."""
        return self.flops / 2e9


def count_flops(config: FlashOccConfig) -> FlopCount:
    """FLOPs of one forward (batch 1, ranks in the graph) on a test-time camera rig.
    `bev_pool_v2` is not counted (a custom op; M × C multiply-adds, 0.01 G for M0)."""
    model = init_weights(FlashOcc(config)).eval()
    rig = camera_rig(config, seed=1)
    counter = FlopCounterMode(display=False, depth=1)
    with torch.no_grad(), counter:
        model(*rig.values())
    counts = counter.get_flop_counts()
    by_module = {name.removeprefix("FlashOcc."): sum(ops.values())
                 for name, ops in counts.items() if name.count(".") == 1}
    return FlopCount(config.name, counter.get_total_flops(), by_module)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["m0"]:
        count = count_flops(CONFIGS[name])
        params = sum(p.numel() for p in FlashOcc(CONFIGS[name]).parameters())
        print(f"{name}: {count.gflops:.2f} GFLOPs = {count.gmacs:.2f} G multiply-adds, "
              f"{params / 1e6:.2f} M parameters")
        for module, flops in count.by_module.items():
            print(f"  {module:28s} {flops / 2e9:8.2f} G multiply-adds")
