"""Per-output tolerances a script may declare (`tolerances`, contract §2): read and checked
when the script loads, applied by verification."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any


@dataclass(frozen=True)
class Tolerance:
    """How one output is judged (a script's `tolerances`, contract §2): an element is within
    tolerance when |actual - eager| <= rtol·|eager| + atol·max(largest |eager|, 1) (floats) or
    when it equals eager's (integers); the output passes when at least `share` of its
    elements are. `argmax`: a float output (scores, logits) is judged instead by the labels
    its argmax over the last axis gives, at least `share` of them equal to eager's. None: the
    defaults (per dtype; share 1 for floats, 0.999 for integers and argmax).

    For outputs that are step functions of float inputs, where another runtime's last-bit
    rounding may legitimately move a few elements (a point crossing a cell boundary); the
    count of elements outside the tolerance is reported either way."""

    rtol: float | None = None
    atol: float | None = None
    share: float | None = None
    argmax: bool = False

    KEYS = ("rtol", "atol", "share", "argmax")


DEFAULT_TOLERANCE = Tolerance()


def parse_tolerances(value: Any, where: str) -> dict[str, Tolerance]:
    """`{output name: {"rtol": ..., "atol": ..., "share": ...}}` → Tolerance per output. Raises
    ValueError with a one-line description of the first entry that is not of that form."""
    if not isinstance(value, dict):
        raise ValueError(f"`tolerances` in {where} is a {type(value).__name__}, not a dict of "
                         "output name → {\"rtol\", \"atol\", \"share\"}")
    parsed = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            raise ValueError(f"`tolerances` in {where}: the entry {name!r} must map an output "
                             "name (str) to a dict such as {\"share\": 0.999}")
        unknown = sorted(set(entry) - set(Tolerance.KEYS))
        if unknown:
            raise ValueError(f"`tolerances[{name!r}]` in {where} has {unknown}; the keys are "
                             f"{', '.join(Tolerance.KEYS)}")
        for key, number in entry.items():
            if key == "argmax":
                if not isinstance(number, bool):
                    raise ValueError(f"`tolerances[{name!r}]['argmax']` in {where} is "
                                     f"{number!r}; it must be True or False")
                continue
            if not isinstance(number, Real) or isinstance(number, bool) or number < 0 or (
                    key == "share" and not 0 < number <= 1):
                bounds = "in (0, 1]" if key == "share" else ">= 0"
                raise ValueError(f"`tolerances[{name!r}][{key!r}]` in {where} is {number!r}; "
                                 f"it must be a number {bounds}")
        parsed[name] = Tolerance(**{key: number if key == "argmax" else float(number)
                                    for key, number in entry.items()})
    return parsed

