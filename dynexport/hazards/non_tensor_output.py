"""non_tensor_output: the exported method returns something that is not a tensor."""

from __future__ import annotations

import ast
import inspect
import textwrap

import numpy as np
import torch

from dynexport.hazards.common import hazard
from dynexport.hazards.evidence import Evidence
from dynexport.hazards.records import Hazard, SourceLocation


def from_outputs(evidence: Evidence) -> list[Hazard]:
    """Every eager output leaf that is not a tensor (None is allowed; so is a Python number
    that capture made a program output: the exporters return it as a 0-d tensor)."""
    found = []
    for name, value in evidence.outputs:
        if isinstance(value, torch.Tensor) or value is None or is_captured_number(evidence, value):
            continue
        converted = evidence.strict_captured and isinstance(value, np.ndarray)
        found.append(hazard(
            "non_tensor_output.from_outputs", "non_tensor_output",
            "warning" if converted else "error", return_location(evidence.model, evidence.method),
            f"Output {name!r} is a {type(value).__name__}, not a tensor"
            + ("; strict capture turned it into a tensor output." if converted
               else "; ONNX and OpenVINO models can only return tensors."),
            "Return tensors from the model and convert them (e.g. `.numpy()`, labels to uint8) "
            "after inference, outside the exported method."))
    return found


def is_captured_number(evidence: Evidence, value: object) -> bool:
    """A Python number (a size such as `x.shape[1] + 1`) returned by a model that was
    captured: the program returns it as a scalar, and each artifact as a 0-d tensor."""
    return (isinstance(value, (bool, int, float)) and not isinstance(value, np.generic)
            and evidence.capture is not None)


def return_location(model: torch.nn.Module | None, method: str) -> SourceLocation | None:
    """The last `return` of the exported method, where its outputs are assembled."""
    function = getattr(type(model), method, None)
    try:
        lines, start = inspect.getsourcelines(function)
        file = inspect.getsourcefile(function)
    except (TypeError, OSError):
        return None
    tree = ast.parse(textwrap.dedent("".join(lines)))
    returns = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Return)]
    line = start + (max(returns) - 1 if returns else 0)
    return SourceLocation(file=file, line=line, code=lines[line - start].strip())


RULES = (from_outputs,)
