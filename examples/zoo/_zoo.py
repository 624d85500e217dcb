"""Shared by the zoo scripts (not a script itself: dynexport puts this folder on sys.path)."""

import torch


def with_batch_statistics(model: torch.nn.Module, size: tuple[int, ...]) -> torch.nn.Module:
    """`model` in eval mode, its batch norms reset to unit scale (weight 1, bias 0) and their
    running statistics measured on a few random batches.

    transformers initialises MobileNetV2's convolutions and EfficientNet's convolutions and
    batch-norm weights with std 0.02: activations shrink layer by layer until the logits are
    ~1e-25 to 1e-35, which makes any comparison meaningless. Measured statistics keep every
    layer at unit scale, as in a trained checkpoint."""
    generator = torch.Generator().manual_seed(123)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
            module.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(size, generator=generator))
    return model.eval()


def pixels(batch: int, height: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    """The keyword inputs of an image model: `pixel_values`, random, reproducible."""
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, height, width, generator=generator)}


def pixel_shapes(max_batch: int = 64, spatial_multiple: int | None = None) -> dict:
    """`dynamic_shapes` for `pixels`: the batch dynamic; with `spatial_multiple`, the height
    and width too, as multiples of it from 2x to 32x (a network that downsamples by 32 needs
    sizes it divides)."""
    dims = {0: torch.export.Dim("batch", min=1, max=max_batch)}
    if spatial_multiple:
        dims[2] = spatial_multiple * torch.export.Dim("h32", min=2, max=32)
        dims[3] = spatial_multiple * torch.export.Dim("w32", min=2, max=32)
    return {"pixel_values": dims}
