"""Feeding real data to the FlashOcc example: `flashocc.preprocess` (FlashOCC's test-time image
pipeline in torch) against a step-by-step NumPy computation and against Pillow itself, and
`flashocc.ranks.from_flashocc` (FlashOCC's precomputed-rank tuple → the example's inputs)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from flashocc import M0, TINY, FlashOccPrecomputed, compute_ranks, init_weights  # noqa: E402
from flashocc.cameras import camera_rig, probe_augmentation  # noqa: E402
from flashocc.preprocess import preprocess  # noqa: E402
from flashocc.ranks import from_flashocc  # noqa: E402

CAMERA_KEYS = ("sensor2ego", "ego2global", "intrinsics", "post_rots", "post_trans", "bda")
LEVEL = 1 / 57.12  # one uint8 level after normalisation (the middle std)


# --- independent reference: FlashOCC's pipeline written out in NumPy ---------------------------

def pil_bicubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's antialiased bicubic resize along one axis: for each output, the input indices
    and float64 weights (n_out, K) of a cubic kernel (a = -0.5) stretched by the downscale
    factor, normalised per output; unused taps have weight 0."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    taps = int(np.ceil(support)) * 2 + 1
    index, weight = np.zeros((n_out, taps), dtype=np.int64), np.zeros((n_out, taps))
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        x = np.abs((np.arange(lo, hi) - centre + 0.5) / stretch)
        w = np.where(x < 1, (1.5 * x - 2.5) * x * x + 1,
                     np.where(x < 2, (((x - 5) * x + 8) * x - 4) * -0.5, 0.0))
        index[o, :hi - lo], weight[o, :hi - lo] = np.arange(lo, hi), w / w.sum()
    return index, weight


def resample(planes: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """One Pillow pass along `axis` of (3, H, W) values, rounded and clipped to uint8."""
    index, weight = pil_bicubic_taps(planes.shape[axis], n_out)
    shape = [1, 1, 1]
    shape[axis] = n_out
    out = sum(np.take(planes, index[:, k], axis=axis) * weight[:, k].reshape(shape)
              for k in range(index.shape[1]))
    return to_uint8(out)


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255)


def pil_crop(image: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """Image.crop((left, top, left + width, top + height)): zeros outside the image."""
    out = np.zeros((height, width, image.shape[2]))
    y0, y1 = max(top, 0), min(top + height, image.shape[0])
    x0, x1 = max(left, 0), min(left + width, image.shape[1])
    out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
    return out


def reference(rgb: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """One camera: (3, fH, fW) normalised BGR, post_rot (3, 3), post_tran (3,), float64."""
    fh, fw = input_size
    h, w, _ = rgb.shape
    resize = fw / w  # sample_augmentation, test time
    new_w, new_h = int(w * resize), int(h * resize)
    top, left = new_h - fh, int(max(0, new_w - fw) / 2)
    # Pillow: horizontal pass, rounded to uint8, then vertical pass, rounded to uint8.
    planes = rgb.transpose(2, 0, 1).astype(np.float64)  # (3, H, W)
    resized = resample(resample(planes, 2, new_w), 1, new_h).transpose(1, 2, 0)
    bgr = pil_crop(resized, left, top, fw, fh)[..., ::-1]  # mmcv's to_rgb swap of PIL's RGB
    normalised = (bgr - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    post_rot = np.diag([resize, resize, 1.0])
    post_tran = np.array([-left, -top, 0.0])
    return normalised.transpose(2, 0, 1), post_rot, post_tran


def camera_images(seed: int, size=(900, 1600), count: int = 6) -> list[np.ndarray]:
    """uint8 RGB images with what resampling finds hard: smooth shading, fine noise, and hard
    saturated edges (bicubic overshoots them, so the clipping matters)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    images = []
    for _ in range(count):
        shade = 128 + 90 * np.sin(xx / rng.uniform(20, 200))[..., None] * np.cos(
            yy / rng.uniform(20, 200))[..., None] * rng.uniform(0.3, 1, 3)
        image = shade + rng.normal(0, 25, (h, w, 3)).astype(np.float32)
        for _ in range(12):
            y0, x0 = rng.integers(0, h - 40), rng.integers(0, w - 40)
            image[y0:y0 + rng.integers(3, 120), x0:x0 + rng.integers(3, 200)] = rng.choice(
                [0, 255], 3)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


# --- preprocess ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nuscenes_images():
    return camera_images(seed=0)


def test_preprocess_matches_step_by_step_numpy(nuscenes_images):
    out = preprocess(nuscenes_images, M0)
    assert out.images.shape == (1, 6, 3, 256, 704) and out.images.dtype == torch.float32
    assert out.post_rots.shape == (1, 6, 3, 3) and out.post_trans.shape == (1, 6, 3)
    for i, rgb in enumerate(nuscenes_images):
        image, post_rot, post_tran = reference(rgb, M0.input_size)
        diff = np.abs(out.images[0, i].double().numpy() - image)
        # torch's uint8 resize works in fixed point, the reference in float64: values
        # within the fixed-point error of a half level round one level apart, no more.
        assert diff.max() < 1.01 * LEVEL, (i, diff.max() / LEVEL)
        assert (diff > 1e-4).mean() < 0.01, (i, (diff > 1e-4).mean())
        np.testing.assert_allclose(out.post_rots[0, i].numpy(), post_rot, rtol=1e-6)
        np.testing.assert_allclose(out.post_trans[0, i].numpy(), post_tran, atol=1e-6)
    # M0 on nuScenes: resize 0.44 to 704×396, the bottom 256 rows.
    assert torch.allclose(out.post_rots[0, 0], torch.diag(torch.tensor([0.44, 0.44, 1.0])))
    assert out.post_trans[0, 0].tolist() == [0.0, -140.0, 0.0]


def test_preprocess_matches_pillow_and_mmcv_semantics(nuscenes_images):
    """FlashOCC's own calls with Pillow: Image.resize(dims) (default filter), crop, rotate(0),
    then mmcv's imnormalize (to_rgb swap, mean, 1/std) written out in NumPy."""
    image_module = pytest.importorskip("PIL.Image")
    out = preprocess(nuscenes_images[:2] * 3, M0)
    for i, rgb in enumerate(nuscenes_images[:2]):
        img = image_module.fromarray(rgb)
        w, h = img.size
        resize = 704 / w
        new_w, new_h = int(w * resize), int(h * resize)
        crop_h, crop_w = new_h - 256, int(max(0, new_w - 704) / 2)
        img = img.resize((new_w, new_h)).crop((crop_w, crop_h, crop_w + 704, crop_h + 256))
        pixels = np.array(img.rotate(0)).astype(np.float32)[..., ::-1]
        mean = np.array([123.675, 116.28, 103.53], dtype=np.float32)
        expected = (pixels - mean) * (1 / np.array([58.395, 57.12, 57.375])).astype(np.float32)
        diff = np.abs(out.images[0, i].numpy() - expected.transpose(2, 0, 1))
        assert diff.max() < 1.01 * LEVEL, diff.max() / LEVEL
        assert (diff > 1e-4).mean() < 0.01


def test_preprocess_geometry_is_the_example_rigs(nuscenes_images):
    """For 1600×900 images, post_rots/post_trans equal camera_rig's test-time augmentation,
    so preprocessed images go with the example's camera inputs and compute_ranks."""
    for config, images in ((M0, nuscenes_images), (TINY, nuscenes_images[:2])):
        out = preprocess(images, config)
        rig = camera_rig(config, seed=3)
        assert torch.equal(out.post_rots, rig["post_rots"])
        assert torch.equal(out.post_trans, rig["post_trans"])
        assert out.images.shape == rig["images"].shape


def test_preprocess_other_sizes_follow_flashocc():
    """FlashOCC computes the resize from each image's own size; a wide image whose resized
    height is short of 256 rows is zero-filled at the top, as Pillow's crop does."""
    images = camera_images(seed=1, size=(300, 1500), count=2) + camera_images(
        seed=2, size=(720, 1280), count=4)
    out = preprocess(images, M0)
    for i, rgb in enumerate(images):
        image, post_rot, post_tran = reference(rgb, M0.input_size)
        diff = np.abs(out.images[0, i].double().numpy() - image)
        assert diff.max() < 1.01 * LEVEL, (i, diff.max() / LEVEL)
        assert (diff > 1e-4).mean() < 0.01
        np.testing.assert_allclose(out.post_rots[0, i].numpy(), post_rot, rtol=1e-6)
        np.testing.assert_allclose(out.post_trans[0, i].numpy(), post_tran, atol=1e-4)
    # 1500 wide: resized to 704×140, so the crop starts 116 rows above the image.
    assert out.post_trans[0, 0].tolist() == [0.0, 116.0, 0.0]
    zero = (0 - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(out.images[0, 0, :, :116].numpy(),
                               np.broadcast_to(zero[:, None, None], (3, 116, 704)), rtol=1e-6)


def test_preprocess_channel_order(nuscenes_images):
    """BGR input (cv2.imread) needs no swap: the same network input as RGB input."""
    rgb = preprocess(nuscenes_images[:2], TINY)
    bgr = preprocess([image[..., ::-1] for image in nuscenes_images[:2]], TINY, "BGR")
    assert torch.equal(rgb.images, bgr.images)
    # RGB pixels declared BGR are not swapped: plane 0 is then R (normalised with mean[0],
    # std[0]), which the right call puts in plane 2.
    swapped = preprocess(nuscenes_images[:2], TINY, "BGR")
    torch.testing.assert_close(swapped.images[:, :, 0] * 58.395 + 123.675,
                               rgb.images[:, :, 2] * 57.375 + 103.53, atol=2e-4, rtol=0)
    assert not torch.allclose(rgb.images, swapped.images)


def test_preprocess_argument_checks(nuscenes_images):
    with pytest.raises(ValueError, match="images must be a sequence of 6"):
        preprocess(nuscenes_images[:5], M0)
    with pytest.raises(ValueError, match="images must be a sequence"):
        preprocess(nuscenes_images[0], M0)
    with pytest.raises(TypeError, match=r"images\[1\] must be uint8"):
        preprocess([nuscenes_images[0], nuscenes_images[1].astype(np.float32)], TINY)
    with pytest.raises(ValueError, match=r"images\[0\] must be \(H, W, 3\)"):
        preprocess([nuscenes_images[0].transpose(2, 0, 1), nuscenes_images[1]], TINY)
    with pytest.raises(ValueError, match="channel_order"):
        preprocess(nuscenes_images[:2], TINY, "rgb")


# --- FlashOCC's rank tuple -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def precomputed():
    model = init_weights(FlashOccPrecomputed(TINY)).eval()
    rig = camera_rig(TINY, seed=2, augmentation=probe_augmentation(TINY))
    ranks = compute_ranks(TINY, *(rig[key] for key in CAMERA_KEYS))
    return model, rig["images"], ranks


def flashocc_order(ranks, dtype=torch.int32):
    """compute_ranks' result as FlashOCC's voxel_pooling_prepare_v2 returns it."""
    return tuple(t.to(dtype) for t in (ranks.ranks_bev, ranks.ranks_depth, ranks.ranks_feat,
                                       ranks.interval_starts, ranks.interval_lengths))


@pytest.mark.parametrize(("dtype", "batched"), [(torch.int32, False), (torch.int64, True)])
def test_from_flashocc_gives_identical_outputs(precomputed, dtype, batched):
    model, images, ranks = precomputed
    with torch.no_grad():
        expected = model(images, *ranks)
        inputs = from_flashocc(flashocc_order(ranks, dtype), images if batched else images[0])
        actual = model(*inputs)
    assert inputs[0].shape == images.shape
    assert all(t.dtype == torch.int32 for t in inputs[1:])
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_from_flashocc_argument_checks(precomputed):
    _, images, ranks = precomputed
    good = flashocc_order(ranks)
    with pytest.raises(ValueError, match="ranks_bev, the first of FlashOCC's tuple"):
        from_flashocc(tuple(ranks), images)  # the example's own order
    with pytest.raises(ValueError, match="5 tensors"):
        from_flashocc(good[:4], images)
    with pytest.raises(TypeError, match="ranks_feat must be an int32 or int64"):
        from_flashocc((*good[:2], good[2].float(), *good[3:]), images)
    with pytest.raises(ValueError, match="ranks_depth has"):
        from_flashocc((good[0], good[1][:-1], *good[2:]), images)
    with pytest.raises(ValueError, match="interval_lengths"):
        from_flashocc((*good[:4], good[4][:-1]), images)
    with pytest.raises(ValueError, match="int32 indices"):
        from_flashocc((good[0], good[1].long() + 2 ** 31, *good[2:]), images)
    with pytest.raises(ValueError, match=r"images must be \(N, 3, H, W\)"):
        from_flashocc(good, images[0, 0])
    with pytest.raises(TypeError, match="images must be a floating-point"):
        from_flashocc(good, images.to(torch.uint8))
