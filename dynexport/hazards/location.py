"""Find the user's own line in a stack: frames inside torch, dynexport and site-packages are
skipped, so a hazard points at the code the user can change. A model that lives entirely in an
installed package (an mmdet3d detector built from a config) has no such frame; its hazards
point at the innermost frame of that package instead."""

from __future__ import annotations

import linecache
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterable

import torch

from dynexport.errors import exception_chain
from dynexport.hazards.records import SourceLocation

_LIBRARY_ROOTS = tuple(
    os.path.realpath(p)
    for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
              sysconfig.get_paths()["stdlib"]}
)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_SITE_PACKAGES = tuple(os.path.realpath(sysconfig.get_paths()[key]) for key in ("purelib",
                                                                                 "platlib"))
_NOT_MODEL_CODE = (_PACKAGE_ROOT, os.path.dirname(os.path.realpath(torch.__file__)))
# Models torch ships (its export examples): the user's code, though inside torch.
_MODELS_IN_TORCH = os.path.join(_NOT_MODEL_CODE[1], "_export", "db", "examples")
# One frame of traceback text; `function` where the text names it ("..., in forward").
FRAME_RE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<function>\S+))?')


def is_user_file(path: str) -> bool:
    """True for source the user wrote: not the standard library, site-packages or dynexport;
    the models torch ships as its export examples count as the user's."""
    if not path or path.startswith("<"):
        return False
    real = os.path.realpath(path)
    if real.startswith(_MODELS_IN_TORCH + os.sep):
        return True
    if real.startswith(_PACKAGE_ROOT + os.sep):
        return False
    return not any(real.startswith(root + os.sep) for root in _LIBRARY_ROOTS)


def is_model_library_file(path: str) -> bool:
    """True for the source of an installed package (site-packages) other than torch and
    dynexport: where a model that comes from a package (e.g. mmdet3d) has its lines."""
    if not path or path.startswith("<"):
        return False
    real = os.path.realpath(path)
    return (any(real.startswith(root + os.sep) for root in _SITE_PACKAGES)
            and not any(real.startswith(root + os.sep) for root in _NOT_MODEL_CODE))


def source_location(file: str, line: int) -> SourceLocation:
    """`file`:`line` with the code on that line."""
    return SourceLocation(file=file, line=line, code=linecache.getline(file, line).strip())


def innermost_user_frame(frames: Iterable[tuple[str, int]]) -> SourceLocation | None:
    """The last (innermost) user frame of (file, line) pairs ordered outermost first; without
    any, the innermost frame of an installed package other than torch."""
    found = fallback = None
    for file, line in frames:
        if is_user_file(file):
            found = (file, line)
        elif is_model_library_file(file):
            fallback = (file, line)
    found = found or fallback
    return source_location(*found) if found else None


def location_from_stack_trace(stack_trace: str | None) -> SourceLocation | None:
    """Parse an fx node's `stack_trace` (traceback text) and return the user's line."""
    if not stack_trace:
        return None
    frames = [(m["file"], int(m["line"])) for m in FRAME_RE.finditer(stack_trace)]
    return innermost_user_frame(frames)


def _user_line(walk) -> SourceLocation | None:
    """The user's innermost line among `(frame, line)` pairs ordered outermost first."""
    return innermost_user_frame((frame.f_code.co_filename, line) for frame, line in walk)


def location_from_traceback(tb) -> SourceLocation | None:
    """The user's innermost line in a Python traceback object."""
    return _user_line(traceback.walk_tb(tb))


def location_from_exception(exc: BaseException) -> SourceLocation | None:
    """The user's line for an exception, following its cause/context chain."""
    for link in exception_chain(exc):
        loc = location_from_traceback(link.__traceback__)
        if loc is not None:
            return loc
    return None


def current_user_frame() -> SourceLocation | None:
    """The user's innermost line in the current Python call stack."""
    return _user_line(reversed(list(traceback.walk_stack(sys._getframe(1)))))
