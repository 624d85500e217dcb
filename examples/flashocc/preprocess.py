"""FlashOCC's test-time image preprocessing in torch: camera images as read from disk → the
network's image tensor, and the post_rots/post_trans that go with it.

What FlashOCC does (Yzichen/FlashOCC, projects/mmdet3d_plugin/datasets/pipelines/loading.py;
the test pipeline of projects/configs/flashocc/flashocc-r50-M0.py is
`PrepareImageInputs(data_config, sequential=False)`, so `is_train` is False):

1. `PrepareImageInputs.get_inputs` reads each camera with `PIL.Image.open(filename)`: nuScenes'
   JPEGs open in mode "RGB", so the pixels are uint8 (H, W, 3) in **RGB** order.
2. `PrepareImageInputs.sample_augmentation` (test branch), with `data_config`
   `input_size=(256, 704)` = (fH, fW), `resize_test=0.0`, `crop_h=(0.0, 0.0)`, and H, W the
   image's own size (900, 1600 for nuScenes; `src_size` in the config is not read):
   `resize = fW / W` (704 / 1600 = 0.44), `resize_dims = (int(W·resize), int(H·resize))`
   = (704, 396), `crop_h = int((1 - mean(crop_h))·newH) - fH` = 396 - 256 = 140 (the bottom
   256 rows), `crop_w = int(max(0, newW - fW) / 2)` = 0, crop box `(crop_w, crop_h,
   crop_w + fW, crop_h + fH)`, no flip, rotate 0.
3. `PrepareImageInputs.img_transform_core`: `img.resize(resize_dims)` with Pillow's default
   filter, `img.crop(crop)`, `img.rotate(0)` (a copy). Pillow's default for `resize` is
   BICUBIC, not bilinear, since Pillow 7.0 (its release notes, "Default resampling filter";
   FlashOCC's doc/install.md, Python 3.8 and torch 1.10, pins no Pillow, so pip gets a later
   one): a separable convolution whose kernel (cubic, a = -0.5) widens with the downscale
   factor, so it antialiases; computed in 22-bit fixed point, the horizontal pass first, each
   pass rounded and clipped to uint8 (Pillow's src/libImaging/Resample.c).
4. `PrepareImageInputs.img_transform`: `post_rot = resize·I`, `post_tran = -crop[:2]`,
   then the rotation about the crop centre (identity for 0°); made 3×3 / 3-vectors in
   `get_inputs`: post_rot diag(0.44, 0.44, 1), post_tran (0, -140, 0) for M0.
5. `mmlabNormalize`: `mmcv.imnormalize(np.array(img), mean=[123.675, 116.28, 103.53],
   std=[58.395, 57.12, 57.375], to_rgb=True)`; mmcv's `imnormalize_` (mmcv/image/
   photometric.py) converts to float32, swaps channels 0 and 2 with
   `cv2.cvtColor(img, COLOR_BGR2RGB)` (it assumes cv2's BGR input, but FlashOCC hands it
   PIL's RGB, so the swap makes it **BGR**), subtracts `mean[c]` and multiplies by `1/std[c]`
   channel by channel in that swapped order, then `permute(2, 0, 1)`. The network therefore
   sees B, G, R planes normalised with the ImageNet R, G, B statistics, as it was trained.

`preprocess` does the same with torch only (no PIL, mmcv or OpenCV): the resize is
`torch.nn.functional.interpolate(uint8, mode="bicubic", antialias=True)`, torch's
implementation of Pillow's antialiased bicubic for uint8. Measured 2026-12-03 (torch
2.13.0+cpu against Pillow 13.0.0) on two photographs (scikit-learn's sample images china.jpg
and flower.jpg, 640×427, mirrored out to 1600×900 so they keep their own sharpness), resized
to 704×396, in uint8 levels:

| resize | max diff against Pillow's default | values differing |
|---|---:|---:|
| this function (uint8 bicubic, antialias) | 1 | 0.05 % / 0.02 % |
| float32 bicubic, antialias, rounded | 4 | 12.7 % / 13.1 % |
| Pillow's BILINEAR (not what FlashOCC uses) | 26 | 52.9 % / 27.9 % |
| float32 bilinear without antialias | 125 / 83 | 66 % / 45 % |

One level is 1/57 ≈ 0.017 after normalisation. The float bicubic path keeps the horizontal
pass unrounded and unclipped, where Pillow rounds and clips it to uint8 (a float64 version
with that rounding, tests/test_flashocc_preprocess.py, stays within 1 level); without
antialiasing a 0.44 downscale aliases fine texture (up to half the range).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Augmentation, _image_augmentation
from .config import M0, FlashOccConfig

# mmlabNormalize's statistics, applied by position to the channel-swapped (BGR) image.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)

ChannelOrder = Literal["RGB", "BGR"]


class CameraImages(NamedTuple):
    """`preprocess`'s result, batch 1, float32: the network's images (1, N, 3, fH, fW) and
    the image augmentation of each camera, post_rots (1, N, 3, 3) and post_trans (1, N, 3)."""

    images: Tensor
    post_rots: Tensor
    post_trans: Tensor


class ImageCrop(NamedTuple):
    """FlashOCC's test-time `sample_augmentation` for one image size."""

    resize: float  # fW / W
    resized: tuple[int, int]  # (newH, newW) = (int(H·resize), int(W·resize))
    top: int  # crop_h: the first row kept, newH - fH (the bottom fH rows)
    left: int  # crop_w: int((newW - fW) / 2), 0 when the width is resized to fW


def image_crop(source_size: tuple[int, int], input_size: tuple[int, int]) -> ImageCrop:
    """Resize and crop of `PrepareImageInputs.sample_augmentation` (is_train False,
    resize_test 0, crop_h (0, 0)) for an image of `source_size` (H, W) and the network's
    `input_size` (fH, fW)."""
    (height, width), (fh, fw) = source_size, input_size
    resize = float(fw) / float(width)
    new_w, new_h = int(width * resize), int(height * resize)
    return ImageCrop(resize, (new_h, new_w), new_h - fh, int(max(0, new_w - fw) / 2))


def preprocess(images: Sequence[np.ndarray | Tensor], config: FlashOccConfig = M0,
               channel_order: ChannelOrder = "RGB") -> CameraImages:
    """The network's images and each camera's post_rot/post_trans from the cameras' images as
    read from disk, at FlashOCC's test-time augmentation.

    `images`: one uint8 (H, W, 3) array or tensor per camera, in `config`'s camera order
    (FlashOCC's `data_config["cams"]`: FRONT_LEFT, FRONT, FRONT_RIGHT, BACK_LEFT, BACK,
    BACK_RIGHT). `channel_order`: "RGB" as PIL, imageio or torchvision read them (what
    FlashOCC reads), "BGR" as `cv2.imread` does. The result's images are BGR, normalised
    (see the module docstring); post_rots and post_trans go with the camera's intrinsics
    and poses into `FlashOcc`'s forward, or into `compute_ranks`. For 1600×900 images they
    are those of `cameras.camera_rig`'s test-time augmentation."""
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"preprocess: channel_order must be 'RGB' or 'BGR', got "
                         f"{channel_order!r}")
    if isinstance(images, (np.ndarray, Tensor)) or len(images) != config.num_cams:
        count = "an array" if isinstance(images, (np.ndarray, Tensor)) else len(images)
        raise ValueError(f"preprocess: images must be a sequence of {config.num_cams} camera "
                         f"images (config {config.name!r}), got {count}")
    fh, fw = config.input_size
    planes, rots, trans = [], [], []
    for i, image in enumerate(images):
        pixels = _as_uint8_hwc(image, f"images[{i}]")
        crop = image_crop(tuple(pixels.shape[:2]), config.input_size)
        # (1, 3, H, W) uint8: interpolate's uint8 path rounds and clips each pass as Pillow.
        resized = F.interpolate(pixels.permute(2, 0, 1)[None].contiguous(), size=crop.resized,
                                mode="bicubic", antialias=True, align_corners=False)
        new_h, new_w = crop.resized
        # Pillow's crop; a box reaching outside the resized image reads zeros there.
        cropped = F.pad(resized, (-crop.left, crop.left + fw - new_w,
                                  -crop.top, crop.top + fh - new_h))[0]
        if channel_order == "RGB":
            cropped = cropped.flip(0)  # mmcv's to_rgb swap: the network sees BGR
        planes.append(_normalize(cropped))
        post_rot, post_tran = _image_augmentation(
            Augmentation(resize=crop.resize, crop_x=crop.left, crop_y=crop.top), fh, fw)
        rots.append(post_rot)
        trans.append(post_tran)
    return CameraImages(torch.stack(planes)[None], torch.stack(rots)[None].float(),
                        torch.stack(trans)[None].float())


def _as_uint8_hwc(image: np.ndarray | Tensor, name: str) -> Tensor:
    pixels = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) \
        else image
    if not isinstance(pixels, Tensor):
        raise TypeError(f"preprocess: {name} must be a NumPy array or a tensor, got "
                        f"{type(image).__name__}")
    if pixels.dtype != torch.uint8:
        raise TypeError(f"preprocess: {name} must be uint8 as read from disk, got "
                        f"{pixels.dtype}")
    if pixels.dim() != 3 or pixels.shape[2] != 3:
        raise ValueError(f"preprocess: {name} must be (H, W, 3), got {tuple(pixels.shape)}")
    return pixels


def _normalize(pixels: Tensor) -> Tensor:
    """(3, H, W) uint8 → float32 (x - mean[c]) · (1 / std[c]), as mmcv's imnormalize_
    (float32 image, the reciprocal of std taken in float64)."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    inverse = (1 / torch.tensor(STD, dtype=torch.float64)).float().view(3, 1, 1)
    return (pixels.float() - mean) * inverse
