"""dynexport: a PyTorch model that almost exports → ExportedProgram, ONNX and OpenVINO IR,
with every hazard named and every runtime verified.

Importing dynexport registers its custom ops and their translations; nothing else runs."""

from __future__ import annotations

import dynexport.custom_ops  # noqa: F401  (registers the ops and their translations)
from dynexport.api import explain, export, to_onnx, to_openvino
from dynexport.localization import localize

__version__ = "0.1.0"
__all__ = ["explain", "export", "localize", "to_onnx", "to_openvino"]
