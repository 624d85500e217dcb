"""Keep one backend's conversion from leaking into the next one's.

A program's fake tensors share one ShapeEnv. torch.onnx's re-trace of a program holding unbacked
symbols (`.item()`, draft export) leaves fresh symbols pending there, and OpenVINO's own re-trace
of the same program then fails with PendingUnbackedSymbolNotFound (measured, torch 2.13)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch._guards import detect_fake_mode
from torch.export import ExportedProgram


@contextmanager
def isolated_shape_env(program: ExportedProgram) -> Iterator[None]:
    """Restore the program's pending unbacked symbols after the block."""
    fake_mode = detect_fake_mode([node.meta.get("val") for node in program.graph.nodes])
    shape_env = getattr(fake_mode, "shape_env", None)
    pending = list(shape_env.pending_fresh_unbacked_symbols) if shape_env else None
    try:
        yield
    finally:
        if shape_env is not None:
            shape_env.pending_fresh_unbacked_symbols[:] = pending
