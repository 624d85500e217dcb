"""Load a FlashOCC checkpoint (.pth as saved by mmcv: the weights under "state_dict", or a
bare state dict) into this package's FlashOcc, with every parameter name checked."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn


class CheckpointMismatch(ValueError):
    """The checkpoint's parameter names or shapes are not the model's."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in `path`: its "state_dict" entry, or the whole file.

    Read with `weights_only=True`: a checkpoint is data and must not run code on load."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatch(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    state = checkpoint.get("state_dict", checkpoint)
    # Saved from a DistributedDataParallel wrapper, every name starts with "module.".
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Copy the checkpoint's weights into `model` (strictly: same names, same shapes) and
    return it; raise CheckpointMismatch listing every missing, unexpected or misshapen one."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshapen = sorted(f"{key}: checkpoint {tuple(state[key].shape)}, model "
                       f"{tuple(expected[key].shape)}"
                       for key in expected.keys() & state.keys()
                       if tuple(state[key].shape) != tuple(expected[key].shape))
    if missing or unexpected or misshapen:
        raise CheckpointMismatch(_describe(path, missing, unexpected, misshapen))
    model.load_state_dict(state, strict=True)
    return model


def _describe(path: str | os.PathLike, missing: list[str], unexpected: list[str],
              misshapen: list[str]) -> str:
    lines = [f"{path} does not match the model (is it a FlashOCC checkpoint of the same "
             "config? --config m0 is flashocc-r50-M0, m1 is flashocc-r50):"]
    for title, keys in (("missing from the checkpoint", missing),
                        ("unexpected in the checkpoint", unexpected),
                        ("of another shape", misshapen)):
        if keys:
            lines.append(f"  {len(keys)} {title}:")
            lines += [f"    {key}" for key in keys[:20]]
            if len(keys) > 20:
                lines.append(f"    … and {len(keys) - 20} more")
    return "\n".join(lines)
