"""Known-library patches (dynexport/patches): the scoped swap, the capture that goes through
it and reports it in `handled` at the calling line, `--no-patch`, and each shipped patch
numerically against the library's original."""

import importlib
import inspect
import sys
import types

import pytest
import torch
from helpers import REPO

from dynexport.__main__ import UsageError, _options, _parser
from dynexport.capture import capture
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.handled import library_patches
from dynexport.inputs import Inputs
from dynexport.patches import applied, register_patch, registry

# --- a stand-in library: a function with a data-dependent branch, re-exported -------------


def _library() -> tuple[types.ModuleType, types.ModuleType]:
    ops = types.ModuleType("fakelib.ops")
    exec(inspect.cleandoc('''
        import torch

        def keep_positive(x):
            kept = x[x > 0]
            if kept.numel() == 0:  # data-dependent: no export strategy but draft captures it
                return torch.zeros(1)
            return kept.sum(0, keepdim=True)
    '''), ops.__dict__)
    package = types.ModuleType("fakelib")
    package.keep_positive = ops.keep_positive  # re-exported, as packages do
    return package, ops


def _export_safe_keep_positive(x: torch.Tensor) -> torch.Tensor:
    """The same numbers with no branch: the sum of nothing is 0."""
    return torch.where(x > 0, x, 0).sum(0, keepdim=True)


@pytest.fixture
def fakelib(monkeypatch):
    package, ops = _library()
    monkeypatch.setitem(sys.modules, "fakelib", package)
    monkeypatch.setitem(sys.modules, "fakelib.ops", ops)
    registry.registered_patches()  # the shipped ones load into the real registry, not the copy
    monkeypatch.setattr(registry, "_PATCHES", dict(registry._PATCHES))
    register_patch("fakelib.keep_positive", "fakelib.ops:keep_positive",
                   why="a branch on the number of positive entries")(_export_safe_keep_positive)
    return package, ops


class UsesLibrary(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sys.modules["fakelib"].keep_positive(x) * 2  # the calling line


CALL_LINE = inspect.getsourcelines(UsesLibrary.forward)[1] + 1


def test_applied_swaps_every_holder_and_restores_them(fakelib):
    package, ops = fakelib
    original = ops.keep_positive
    with applied() as calls:
        assert ops.keep_positive is not original and package.keep_positive is ops.keep_positive
        assert UsesLibrary()(torch.tensor([-1.0, 2.0])).item() == 4.0
    assert ops.keep_positive is original and package.keep_positive is original
    assert [(c.patch.name, c.location.file, c.location.line) for c in calls] == \
        [("fakelib.keep_positive", __file__, CALL_LINE)]


def test_disabled_patch_and_unimported_library_are_left_alone(fakelib, monkeypatch):
    _, ops = fakelib
    original = ops.keep_positive
    with applied(disabled=("fakelib.keep_positive",)):
        assert ops.keep_positive is original
    monkeypatch.delitem(sys.modules, "fakelib.ops")
    with applied():
        assert "fakelib.ops" not in sys.modules  # a patch never imports its library


@pytest.mark.parametrize("x", [torch.tensor([-1.0, 2.0, 3.0]), torch.tensor([-1.0, -2.0])])
def test_the_stand_in_patch_matches_the_original(fakelib, x):
    _, ops = fakelib
    torch.testing.assert_close(_export_safe_keep_positive(x), ops.keep_positive(x))


@pytest.mark.parametrize("no_patch, strategies", [
    ((), ("strict", "non_strict", "draft")),  # strict: the calling line read from the graph
    ((), ("non_strict",)),  # non-strict runs the wrapper, which records the calling line
    (("fakelib.keep_positive",), ("strict", "non_strict", "draft"))])
def test_capture_goes_through_the_patch_and_handled_names_the_calling_line(fakelib, no_patch,
                                                                           strategies):
    _, ops = fakelib
    model, x = UsesLibrary(), torch.tensor([-1.0, 2.0, 3.0])
    captured = capture(model, Inputs((x,), {}), no_patch=no_patch, strategies=strategies)
    handled = library_patches(Evidence(model=model, capture=captured))
    if no_patch:  # the branch on the data: only draft export gets through, with no patch
        assert captured.strategy == "draft" and handled == []
        return
    assert captured.strategy == strategies[0]
    assert [(h.file, h.line) for h in handled] == [(__file__, CALL_LINE)]
    assert "fakelib.keep_positive" in handled[0].what and "--no-patch" in handled[0].what
    for probe in (x, torch.tensor([-4.0, -5.0, -6.0])):
        torch.testing.assert_close(captured.program.module()(probe), model(probe))
    assert ops.keep_positive.__code__.co_name == "keep_positive"  # eager model untouched


def test_no_patch_option(fakelib):
    options = _options(_parser().parse_args(["--no-patch", "fakelib.keep_positive", "m.py"]),
                       "m.py")
    assert options.no_patch == ("fakelib.keep_positive",)
    with pytest.raises(UsageError, match="unknown patches"):
        _options(_parser().parse_args(["--no-patch", "nolib.nothing", "m.py"]), "m.py")


# --- torchvision's patches against torchvision's originals ----------------------------------

def _torchvision(module: str) -> types.ModuleType:
    """torchvision.<module>, or skip when torchvision is not importable."""
    sys.path.insert(0, str(REPO.parent / "shared" / "tools"))
    try:
        import tvshim  # noqa: F401  (makes the PyPI CUDA wheel importable with CPU torch)

        return importlib.import_module(f"torchvision.{module}")
    except ImportError as exc:
        pytest.skip(f"torchvision is not importable ({exc}); see "
                    "examples/torchvision_detectors/_detectors.py")
    finally:
        sys.path.pop(0)


def _boxes(n: int, classes: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=generator) * 100
    size = torch.rand(n, 2, generator=generator) * 30 + 1
    return (torch.cat([corner, corner + size], 1), torch.rand(n, generator=generator),
            torch.randint(0, classes, (n,), generator=generator))


@pytest.mark.parametrize("n, classes", [(0, 3), (1, 1), (200, 5), (1500, 20)])
def test_batched_nms_patch_matches_torchvision(n, classes):
    """0 boxes: torchvision's early return; 1500 boxes (> 4000 coordinates): its per-class
    loop, whose final sort orders equal scores arbitrarily (1500 random floats have ties):
    the same boxes, in the same order of scores."""
    boxes = _torchvision("ops.boxes")
    from dynexport.patches.torchvision import batched_nms

    args = (*_boxes(n, classes, seed=n), 0.5)
    expected = boxes.batched_nms(*args)
    kept = batched_nms(*args)
    assert sorted(kept.tolist()) == sorted(expected.tolist())
    assert torch.equal(args[1][kept], args[1][expected])
    assert 0 < len(expected) < n or n <= 1


def _features(levels: int) -> list[torch.Tensor]:
    """Two images' feature maps of a 160×160 input, strides 4, 8, 16, ..."""
    generator = torch.Generator().manual_seed(levels)
    return [torch.randn(2, 3, 40 >> level, 40 >> level, generator=generator)
            for level in range(levels)]


def _proposals(n: int, seed: int) -> list[torch.Tensor]:
    """n boxes in the first image and n // 2 in the second, 2 to 150 pixels wide: small ones
    map to the finest level, large ones to coarser levels."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=generator) * 100
    boxes = torch.cat([corner, corner + torch.rand(n, 2, generator=generator) * 148 + 2], 1)
    return [boxes, boxes[: n // 2] + 1]


@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("n", [0, 1, 2, 60])
def test_multiscale_roi_align_patch_matches_torchvision(levels, n):
    poolers = _torchvision("ops.poolers")
    from dynexport.patches.torchvision import multiscale_roi_align

    features, proposals = _features(levels), _proposals(n, seed=n)
    scales, mapper = poolers._setup_scales(features, [(160, 160)], 224, 4)
    args = (features, proposals, (7, 7), 2, scales, mapper)
    expected = poolers._multiscale_roi_align(*args)
    assert torch.equal(multiscale_roi_align(*args), expected)
    if n == 60 and levels == 3:  # the selection by level is exercised
        assert (mapper(proposals).bincount() > 0).sum() >= 2


class PoolsKeptBoxes(torch.nn.Module):
    """Keeps the boxes scoring over 0.5 (a data-dependent number) and pools them."""

    def __init__(self, poolers: types.ModuleType) -> None:
        super().__init__()
        self.pool = poolers.MultiScaleRoIAlign(["0", "1", "2"], 7, 2)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor
                ) -> torch.Tensor:
        levels = {str(level): torch.nn.functional.avg_pool2d(features, 2 ** level)
                  for level in range(3)}
        return self.pool(levels, [boxes[scores > 0.5]], [(160, 160)])


def test_multiscale_roi_align_patch_keeps_the_number_of_rois_dynamic():
    poolers = _torchvision("ops.poolers")
    model = PoolsKeptBoxes(poolers)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 3, 40, 40, generator=generator)

    def inputs(n: int, seed: int) -> tuple[torch.Tensor, ...]:
        scores = torch.rand(n, generator=torch.Generator().manual_seed(seed))
        return features, _proposals(n, seed)[0], scores

    example = inputs(40, seed=1)
    model(*example)  # sets the module's scales, as the detector's eager run does
    boxes = torch.export.Dim("boxes")
    captured = capture(model, Inputs(example, {}), dynamic_shapes=(None, {0: boxes}, {0: boxes}),
                       strategies=("non_strict",))
    handled = library_patches(Evidence(model=model, capture=captured))
    assert [(h.file.endswith("poolers.py"), "torchvision.multiscale_roi_align" in h.what)
            for h in handled] == [(True, True)]
    for probe in (example, inputs(60, seed=2), inputs(3, seed=3)):
        expected = model(*probe)
        assert torch.equal(captured.program.module()(*probe), expected)


@pytest.mark.parametrize("n, classes", [(0, 91), (1, 91), (2, 1), (30, 5)])
def test_box_coder_decode_patch_matches_torchvision(n, classes):
    """The same boxes; for zero boxes torchvision returns (0, 4 × classes) where the patch
    returns (0, classes, 4), both empty, which its callers treat alike."""
    detection_utils = _torchvision("models.detection._utils")
    from dynexport.patches.torchvision import box_coder_decode

    coder = detection_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
    generator = torch.Generator().manual_seed(n)
    proposals = _proposals(n, seed=n)
    codes = torch.randn(len(proposals[0]) + len(proposals[1]), 4 * classes, generator=generator)
    expected = coder.decode(codes, proposals)
    decoded = box_coder_decode(coder, codes, proposals)
    assert decoded.shape == (len(codes), classes, 4)
    assert torch.equal(decoded.flatten(1), expected.flatten(1))


@pytest.mark.parametrize("n", [0, 1, 5, 40])
def test_paste_masks_in_image_patch_matches_torchvision(n):
    """Boxes partly outside the image included (torchvision's own slicing fails on boxes that
    start past the image, which its detectors never pass). The bilinear weights are
    interpolate's, the sums run in another order than its kernel: within 1e-5 of masks in
    [0, 1] (measured 4e-6), zero exactly where torchvision pastes nothing."""
    roi_heads = _torchvision("models.detection.roi_heads")
    from dynexport.patches.torchvision import paste_masks_in_image

    generator = torch.Generator().manual_seed(n)
    masks = torch.rand(n, 1, 28, 28, generator=generator)
    corner = torch.rand(n, 2, generator=generator) * 75 - 5
    boxes = torch.cat([corner, corner + torch.rand(n, 2, generator=generator) * 40 + 0.5], 1)
    expected = roi_heads.paste_masks_in_image(masks, boxes, (96, 80))
    pasted = paste_masks_in_image(masks, boxes, (96, 80))
    torch.testing.assert_close(pasted, expected, rtol=0, atol=1e-5)
    assert torch.equal(pasted != 0, expected != 0)
