"""FlashOcc (Yu et al., 2023) in plain torch.nn, export-ready: the architecture of FlashOCC's
released `flashocc-r50-M0` / `flashocc-r50` configs with checkpoint-compatible parameter
names, camera rigs for examples, a ranks helper for precomputed BEV pooling, and the seed's
original (legacy) patterns for comparison. See docs/flashocc.md."""

from .checkpoint import CheckpointMismatch, load_checkpoint
from .config import CONFIGS, M0, M1, SMALL, TINY, FlashOccConfig, GridConfig
from .model import FlashOcc, FlashOccPadded, FlashOccPrecomputed, init_weights
from .preprocess import CameraImages, preprocess
from .ranks import Ranks, compute_padded_ranks, compute_ranks, from_flashocc

__all__ = [
    "CONFIGS", "M0", "M1", "SMALL", "TINY", "CameraImages", "CheckpointMismatch", "FlashOcc",
    "FlashOccConfig", "FlashOccPadded", "FlashOccPrecomputed", "GridConfig", "Ranks",
    "compute_padded_ranks", "compute_ranks",
    "from_flashocc", "init_weights", "load_checkpoint", "preprocess",
]
