"""unsupported_op: an op of the program that a backend cannot lower (the conversion stages
name them, with the user's line, when a conversion fails)."""

from __future__ import annotations

from dynexport.hazards.evidence import Evidence
from dynexport.hazards.records import Hazard, UnsupportedOp

_BACKEND_NAMES = {"onnx": "ONNX (torch.onnx)", "openvino": "OpenVINO"}
# What the exporters' own tables turn a declined inverse / det / solve into.
_LINALG_INTERNALS = {"aten._linalg_check_errors.default", "aten._linalg_det.default",
                     "aten._linalg_solve_ex.default"}
# Python-level callables in a graph: size arithmetic on symbolic shapes (torch.sym_min,
# operator.floordiv, math.ceil), not ops of any library.
_SHAPE_ARITHMETIC = ("torch.sym_", "_operator.", "operator.", "math.", "builtins.")


def from_conversions(evidence: Evidence) -> list[Hazard]:
    """An error per op, backend and user line that a failed conversion named."""
    return [unsupported_op_hazard(op) for op in evidence.unsupported_ops]


def unsupported_op_hazard(op: UnsupportedOp) -> Hazard:
    return Hazard(
        category="unsupported_op", severity="error", file=op.file, line=op.line, code=op.code,
        message=(f"{_BACKEND_NAMES[op.backend]} has no lowering for {op.op} "
                 f"({op.count} use{'s' if op.count != 1 else ''}); "
                 f"the {op.backend} conversion fails here"),
        fix=fix_for(op.op, op.backend), rule="unsupported_op.from_conversions")


def fix_for(op: str, backend: str) -> str:
    from dynexport.coverage import op_name
    from dynexport.decompositions import declined_fixes, inverse

    fixes = {op_name(decomposed): fix for decomposed, fix in declined_fixes().items()}
    fixes.update(dict.fromkeys(_LINALG_INTERNALS, inverse.DECLINED))
    if op in fixes:
        return fixes[op]
    if op.startswith(_SHAPE_ARITHMETIC):
        return (f"`{op}` is arithmetic on symbolic sizes that {backend} cannot lower: compute "
                "the size from static dimensions, use tensor ops on `x.shape` values "
                "(`torch.minimum`, `torch.clamp`), or declare the dimensions it depends on "
                "static")
    if not op.startswith(("aten.", "prims.")):
        return (f"this custom op has no {backend} translation registered; add one with the "
                "dynexport.custom_ops kit (see dynexport/custom_ops/README.md)")
    return ("rewrite the line with ops both backends support; or wrap it in a custom op "
            "and register per-backend translations with the dynexport.custom_ops kit; "
            "or add a decomposition for it to dynexport/decompositions/")


RULES = (from_conversions,)
