"""torch's own export examples (torch/_export/db/examples/, shipped with torch), one per run:

    python -m dynexport examples/export_db.py cond_predicate
    python -m dynexport examples/export_db.py --list

Each example is a model, its `example_args` / `example_kwargs` and, for some, `dynamic_shapes`,
written by the torch.export team to document a pattern export supports (or, marked
NOT_SUPPORTED_YET, one it does not). Where a dimension is dynamic, the probe input has another
size there, so verification checks the converted models at a size they were not exported at.
"""

import inspect
import sys

import torch
from torch._export.db.case import SupportLevel
from torch._export.db.examples import all_examples

# The probe's size along a dynamic dimension: the example's plus this, so it differs from the
# example and from torch.export's specialised sizes 0 and 1.
PROBE_GROWTH = 2


def _case():
    name = sys.argv[1] if len(sys.argv) > 1 else "--list"
    cases = all_examples()
    if name == "--list" or name not in cases:
        known = ", ".join(sorted(cases))
        raise SystemExit(f"name one of torch's export examples: {known}")
    return cases[name]


CASE = _case()
dynamic_shapes = CASE.dynamic_shapes
SUPPORTED = CASE.support_level == SupportLevel.SUPPORTED


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return CASE.model


def get_inputs():
    return tuple(CASE.example_args), dict(CASE.example_kwargs)


def get_probe_inputs():
    """The example with new values, and another size along every dynamic dimension."""
    torch.manual_seed(1)
    args, kwargs = get_inputs()
    names = list(inspect.signature(CASE.model.forward).parameters)
    specs = _specs_by_position(len(args), names)
    probe_args = tuple(_other(arg, spec) for arg, spec in zip(args, specs, strict=True))
    probe_kwargs = {key: _other(value, _spec_of(key)) for key, value in kwargs.items()}
    return probe_args, probe_kwargs


def _specs_by_position(count: int, names: list[str]) -> list:
    if dynamic_shapes is None:
        return [None] * count
    if isinstance(dynamic_shapes, dict):
        return [dynamic_shapes.get(name) for name in names[:count]]
    return list(dynamic_shapes)[:count] + [None] * (count - len(dynamic_shapes))


def _spec_of(name: str):
    return dynamic_shapes.get(name) if isinstance(dynamic_shapes, dict) else None


def _other(value, spec):
    """A tensor like `value` with new values, grown along the dimensions `spec` marks dynamic;
    anything else as it is."""
    if not isinstance(value, torch.Tensor):
        return value
    shape = list(value.shape)
    for dim in (spec or {}):
        shape[dim] += PROBE_GROWTH
    if value.dtype.is_floating_point:
        return torch.randn(shape, dtype=value.dtype)
    if value.dtype == torch.bool:
        return torch.rand(shape) > 0.5
    low = int(value.min()) if value.numel() else 0
    high = int(value.max()) + 1 if value.numel() else low + 1
    return torch.randint(low, high, shape, dtype=value.dtype)
