"""Shared by the torchvision detector scripts (not a script itself: dynexport puts this folder
on sys.path).

torchvision is not a dependency of dynexport. Its PyPI wheel for torch 2.13 is a CUDA build;
the project's tools/tvshim.py (in the `shared/tools` folder next to the repository) makes it
importable with the CPU torch. To try these scripts:

    python -m venv --system-site-packages /tmp/tv/venv
    /tmp/tv/venv/bin/pip install --no-deps torchvision==0.28.0
    /tmp/tv/venv/bin/python -m dynexport examples/torchvision_detectors/ssdlite.py
"""

import sys
from collections.abc import Callable
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parents[3] / "shared" / "tools"
OUTPUTS = ("boxes", "scores", "labels", "masks")


def detection_models():
    """torchvision.models.detection, made importable by tvshim; ImportError (with how to get
    it) when torchvision is not installed."""
    sys.path.insert(0, str(TOOLS))
    try:
        import tvshim  # noqa: F401  (before torchvision: declares its C++ ops)
        from torchvision.models import detection
    except ImportError as exc:
        raise ImportError(f"these scripts need torchvision ({exc}); see {__file__}'s docstring "
                          "for a scratch environment that has it") from exc
    finally:
        sys.path.remove(str(TOOLS))
    return detection


class Detections(torch.nn.Module):
    """A torchvision detector on one image (3, H, W): its detections as a tuple (boxes,
    scores, labels[, masks]), each with a data-dependent number of rows."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detections = self.detector([image])[0]
        return tuple(detections[key] for key in OUTPUTS if key in detections)


def with_batch_statistics(detector: torch.nn.Module, size: int, batches: int = 2) -> None:
    """Random weights leave a randomly initialised backbone's batch norms at mean 0, variance
    1, and its features nearly constant (every image gave the same detections, measured on
    ssdlite): measure the statistics on random batches as a trained checkpoint would have."""
    generator = torch.Generator().manual_seed(123)
    for module in detector.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
            module.momentum = None  # a cumulative average over the batches
    detector.train()
    with torch.no_grad():
        for _ in range(batches):
            features = detector.backbone(torch.randn(2, 3, size, size, generator=generator))
            if hasattr(detector, "head"):  # ssdlite's head has batch norms too
                detector.head(list(features.values()))
    detector.eval()


def image(seed: int, size: int = 192) -> tuple[torch.Tensor]:
    return (torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed)),)


def image_inputs(example: int, probe: int, test: int) -> tuple[Callable, Callable, Callable]:
    """A script's get_inputs, get_probe_inputs and get_test_inputs (a third image neither run
    saw, for tests/test_torchvision_detectors.py): the images of these seeds."""
    return (lambda: image(example)), (lambda: image(probe)), (lambda: image(test))
