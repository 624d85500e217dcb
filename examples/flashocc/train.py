"""Train FlashOcc on procedural scenes (examples/flashocc/world.py) and ship the checkpoint.

    python -m examples.flashocc.train                      # `small`, writes checkpoints/small.pt
    python -m examples.flashocc.train --config tiny --steps 20 --scenes 4 --out /tmp/tiny.pt

Deterministic: seeded weights and data order, fixed scene seeds (training scenes from
TRAIN_SEED, held-out scenes from VALIDATION_SEED, disjoint), a fixed number of torch threads.
Each training sample is a scene with one of four BEV augmentations (FlashOcc's `bda` flips
along x and/or y, with the ground truth flipped to match), so no scene is rendered twice.
Loss: class-balanced occupancy cross-entropy over the voxels the cameras see (FlashOcc's
weights 1 / log(frequency), Occ3D's mask_camera) + BEVDet's depth loss (the nearest depth in
each stride-16 patch as a one-hot bin, here cross-entropy on the predicted distribution).
The weights are saved in float16 (load_checkpoint copies them into the float32 model).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dynexport.custom_ops import bev_pool_v2

from .config import CONFIGS, FlashOccConfig
from .metric import IGNORE, ConfusionMatrix
from .model import FlashOcc, init_weights
from .ranks import compute_ranks
from .world import CAMERA_KEYS, CLASS_NAMES, Scene, make_scene

TRAIN_SEED = 1_000  # training scenes: TRAIN_SEED + i
VALIDATION_SEED = 900_000  # held-out scenes: VALIDATION_SEED + i
CHECKPOINT = Path(__file__).parent / "checkpoints" / "small.pt"
RENDER_STEP = 2  # world.render's step for training and validation scenes
FLIPS = ((False, False), (True, False), (False, True), (True, True))


def target(scene: Scene) -> Tensor:
    """The evaluated ground truth: the occupancy grid with IGNORE where no camera sees."""
    return torch.where(scene.mask, scene.occupancy, torch.tensor(IGNORE, dtype=torch.uint8))


def validation_scenes(config: FlashOccConfig, count: int) -> list[Scene]:
    return [make_scene(config, VALIDATION_SEED + i, RENDER_STEP) for i in range(count)]


def _flipped(scene: Scene, flip_x: bool, flip_y: bool) -> tuple[dict[str, Tensor], Tensor]:
    """Cameras with the BEV flip in `bda`, and the target flipped to match (the grids are
    symmetric about the ego origin)."""
    cameras = dict(scene.cameras)
    cameras["bda"] = torch.diag(torch.tensor([-1.0 if flip_x else 1.0,
                                              -1.0 if flip_y else 1.0, 1.0])).unsqueeze(0)
    grid = target(scene)
    dims = [d for d, flip in ((0, flip_x), (1, flip_y)) if flip]
    return cameras, grid.flip(dims) if dims else grid


def depth_labels(depth: Tensor, config: FlashOccConfig) -> Tensor:
    """(N, H, W) camera depth → (N, fH, fW) int64 depth bin of the nearest hit in each
    stride-`downsample` patch (BEVDet's get_downsampled_gt_depth), -1 where none is in range."""
    s = config.downsample
    n, h, w = depth.shape
    patches = depth.view(n, h // s, s, w // s, s).permute(0, 1, 3, 2, 4).flatten(-2)
    nearest = torch.where(patches > 0, patches, torch.inf).amin(dim=-1)
    lo, hi, step = config.grid.depth
    bins = torch.floor((nearest - lo) / step)
    valid = torch.isfinite(nearest) & (nearest >= lo) & (nearest < hi)
    return torch.where(valid, bins, -1.0).long()


def forward_train(model: FlashOcc, images: Tensor, ranks: Sequence[Tensor]
                  ) -> tuple[Tensor, Tensor]:
    """FlashOcc's forward with precomputed ranks that also returns the depth distribution:
    (logits (B, Dx, Dy, Dz, classes), depth (B, N, D, fH, fW))."""
    vt = model.img_view_transformer
    depth, feat = vt.lift(model.image_encoder(images))
    dx, dy, dz = model.config.grid.size
    ranks_depth, ranks_feat, ranks_bev, starts, lengths = ranks
    bev = bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev,
                      (depth.shape[0], dz, dy, dx, vt.out_channels), starts, lengths)
    return model.occ_head(model.bev_encoder(vt.collapse_z(bev))), depth


def class_weights(targets: Sequence[Tensor]) -> Tensor:
    """FlashOcc's class balance: 1 / log(voxel count + 0.001) per class over the training
    targets (seen voxels), 0 for classes that never occur."""
    counts = torch.zeros(len(CLASS_NAMES), dtype=torch.float64)
    for t in targets:
        t = t[t != IGNORE].long()
        counts += torch.bincount(t, minlength=len(CLASS_NAMES)).double()
    weights = torch.where(counts > 1, 1.0 / torch.log(counts.clamp(min=2) + 0.001), 0.0)
    return (weights / weights[counts > 1].mean()).float()


@torch.no_grad()
def evaluate(model: FlashOcc, scenes: Sequence[Scene]) -> ConfusionMatrix:
    """Confusion matrix of the model's labels (forward_precomputed, float32) on scenes."""
    model.eval()
    matrix = ConfusionMatrix()
    for scene in scenes:
        ranks = compute_ranks(model.config, *(scene.cameras[key] for key in CAMERA_KEYS))
        labels = model.forward_precomputed(scene.images, *ranks)["occupancy"][0]
        matrix.update(labels, target(scene))
    return matrix


def save_checkpoint(model: FlashOcc, path: Path, meta: dict) -> None:
    """Weights in float16 (buffers such as batch-norm counts as they are), with `meta`."""
    state = {key: value.half() if value.is_floating_point() else value
             for key, value in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, path)


def train(config: FlashOccConfig, steps: int, scenes: int, batch: int = 2, lr: float = 2e-3,
          val_scenes: int = 8, seed: int = 0, log=print) -> tuple[FlashOcc, dict]:
    """Train `config` on `scenes` generated scenes for `steps` steps; returns the model (eval
    mode) and a summary (losses, timings, per-class IoU on held-out scenes)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    data = [make_scene(config, TRAIN_SEED + i, RENDER_STEP) for i in range(scenes)]
    generated = time.perf_counter() - start
    log(f"generated {scenes} training scenes in {generated:.1f} s")
    weights = class_weights([target(s) for s in data])
    model = init_weights(FlashOcc(config), seed=seed)
    # init_weights draws batch-norm statistics for verification; training starts from the
    # usual identity statistics.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_parameters()
            module.reset_running_stats()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(
        (i + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))))
    order = torch.Generator().manual_seed(seed)
    samples = [(i, f) for i in range(scenes) for f in range(len(FLIPS))]
    queue: list[int] = []
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        if len(queue) < batch:
            queue += torch.randperm(len(samples), generator=order).tolist()
        chosen = [samples[queue.pop(0)] for _ in range(batch)]
        flipped = [_flipped(data[i], *FLIPS[f]) for i, f in chosen]
        cameras = {key: torch.cat([c[key] for c, _ in flipped]) for key in CAMERA_KEYS}
        grids = torch.stack([t for _, t in flipped]).long()
        images = torch.cat([data[i].images for i, _ in chosen])
        ranks = compute_ranks(config, *(cameras[key] for key in CAMERA_KEYS))
        logits, depth = forward_train(model, images, ranks)
        occupancy = F.cross_entropy(logits.flatten(0, -2), grids.flatten(), weight=weights,
                                    ignore_index=IGNORE)
        bins = torch.stack([depth_labels(data[i].depth, config) for i, _ in chosen])
        valid = bins >= 0
        probs = depth.permute(0, 1, 3, 4, 2)[valid]  # (valid cells, D)
        depth_loss = -torch.log(probs.gather(1, bins[valid].unsqueeze(1)).clamp(min=1e-6)).mean()
        loss = occupancy + 0.5 * depth_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  occupancy {occupancy.item():.4f}  "
                f"depth {depth_loss.item():.4f}  {time.perf_counter() - t0:.0f} s")
    trained = time.perf_counter() - t0
    model.eval()
    summary = {"config": config.name, "steps": steps, "scenes": scenes, "batch": batch,
               "lr": lr, "seed": seed, "generate_s": round(generated, 1),
               "train_s": round(trained, 1), "first_loss": losses[0], "last_loss": losses[-1],
               "losses": losses}
    if val_scenes:
        t1 = time.perf_counter()
        held_out = validation_scenes(config, val_scenes)
        matrix = evaluate(model, held_out)
        iou = matrix.iou()
        summary.update(
            validation_scenes=val_scenes, miou=round(matrix.miou(), 2),
            iou={name: round(float(v) * 100, 2)
                 for name, v in zip(CLASS_NAMES, iou, strict=True) if not math.isnan(float(v))},
            evaluate_s=round(time.perf_counter() - t1, 1))
        log(f"held-out mIoU {summary['miou']:.2f} over {val_scenes} scenes; per class: "
            + ", ".join(f"{k} {v:.1f}" for k, v in summary["iou"].items() if k != "free"))
    return model, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.flashocc.train",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--scenes", type=int, default=48, help="training scenes")
    parser.add_argument("--val-scenes", type=int, default=8, help="held-out scenes (0: none)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine two threads ran 8x slower)")
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = CONFIGS[args.config]
    model, summary = train(config, args.steps, args.scenes, args.batch, args.lr,
                           args.val_scenes, args.seed)
    summary.pop("losses")
    summary["load_average"] = os.getloadavg()
    save_checkpoint(model, args.out, summary)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
