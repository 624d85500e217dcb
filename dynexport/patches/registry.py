"""The registry of known-library patches and the scoped context that applies them.

A patch names a function of a library by "module:attribute" ("torchvision.ops.boxes:
batched_nms"; the attribute may be dotted, "package.module:Class.method") and gives a
replacement with the same signature and the same numbers that torch.export captures without
a hazard. `applied()` swaps the replacements in for the duration of a capture only: in the
owner (module or class) and wherever else a module holds the same function object (a package
re-exporting it, `from lib import f` in the user's module), and puts every original back on
exit, so the user's eager model (the verification reference) always runs the library's own
code. A library that is not imported is never imported by a patch.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dynexport.hazards.location import FRAME_RE, source_location
from dynexport.hazards.records import SourceLocation

__all__ = ["Patch", "PatchCall", "applied", "calls_in_graph", "patch_names", "register_patch",
           "registered_patches"]


@dataclass(frozen=True)
class Patch:
    """One export-safe replacement of one library function."""

    name: str  # what `--no-patch NAME` names, e.g. "torchvision.batched_nms"
    target: str  # "module:attribute"
    replacement: Callable
    why: str  # what the original does that torch.export cannot capture, and what replaces it
    shipped: bool = False  # one of dynexport's own (on by default; user patches are too)

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def attribute(self) -> str:
        return self.target.partition(":")[2]


@dataclass
class PatchCall:
    """A patched function called during a capture, at the line that called it."""

    patch: Patch
    location: SourceLocation | None


_PATCHES: dict[str, Patch] = {}
_TARGET = re.compile(r"^[\w.]+:[\w.]+$")


def register_patch(name: str, target: str, why: str, *, shipped: bool = False
                   ) -> Callable[[Callable], Callable]:
    """Decorator registering the decorated function as the replacement of `target`
    ("module:attribute") during dynexport's captures, under `name`. Returns the function
    unchanged. Registering a name again replaces that patch."""
    if not _TARGET.match(target):
        raise ValueError(f"patch {name!r}: target must be 'module:attribute', got {target!r}")

    def register(replacement: Callable) -> Callable:
        _PATCHES[name] = Patch(name, target, replacement, why, shipped)
        return replacement

    return register


def registered_patches() -> list[Patch]:
    """Every registered patch, dynexport's shipped ones included."""
    _load_shipped()
    return list(_PATCHES.values())


def patch_names() -> list[str]:
    return [patch.name for patch in registered_patches()]


def _load_shipped() -> None:
    importlib.import_module("dynexport.patches.torchvision")


# One capture at a time patches a library: the swaps are process-wide.
_LOCK = threading.RLock()


@contextmanager
def applied(disabled: Collection[str] = ()) -> Iterator[list[PatchCall]]:
    """Within the block, every registered patch not named in `disabled` whose module is
    already imported replaces its target. Yields the list to which each call of a patched
    function (outside dynamo's tracing) appends where it was called from."""
    calls: list[PatchCall] = []
    swaps: list[tuple[object, str, object]] = []  # (owner, name, original)
    with _LOCK:
        try:
            for patch in registered_patches():
                if patch.name not in disabled:
                    swaps += _swap(patch, calls)
            yield calls
        finally:
            for owner, name, original in reversed(swaps):
                setattr(owner, name, original)


def _swap(patch: Patch, calls: list[PatchCall]) -> list[tuple[object, str, object]]:
    module = sys.modules.get(patch.module)
    if module is None:
        return []
    *path, name = patch.attribute.split(".")
    owner = functools.reduce(getattr, path, module)
    original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if original is None:
        return []
    wrapper = _recording(patch, calls, original)
    holders = [owner]
    if not path:  # a module-level function: also where other modules re-export it
        holders += [m for m in list(sys.modules.values())
                    if m is not None and m is not module
                    and getattr(m, "__dict__", {}).get(name) is original]
    swaps = []
    for holder in holders:
        swaps.append((holder, name, original))
        setattr(holder, name, wrapper)
    return swaps


def _recording(patch: Patch, calls: list[PatchCall], original: object) -> Callable:
    replacement = patch.replacement
    descriptor = isinstance(original, (staticmethod, classmethod))

    @functools.wraps(getattr(original, "__func__", original))
    def _dynexport_patched_call(*args, **kwargs):
        import torch

        # Under dynamo (strict capture) this frame is traced, not run: the calling line is read
        # from the graph instead. Non-strict and draft export run it (is_compiling() is True
        # there too, is_dynamo_compiling() is not).
        if not torch.compiler.is_dynamo_compiling():
            caller = sys._getframe(1)
            # A `torch.fx.wrap`ped library function (torchvision's poolers) is called through
            # fx's wrapper while export traces: the calling line is the wrapper's caller.
            while caller.f_code.co_filename == torch.fx._symbolic_trace.__file__:
                caller = caller.f_back
            calls.append(PatchCall(patch, source_location(caller.f_code.co_filename,
                                                          caller.f_lineno)))
        return replacement(*args, **kwargs)

    if descriptor:
        return type(original)(_dynexport_patched_call)
    return _dynexport_patched_call


def calls_in_graph(stack_traces: list[str], patches: list[Patch]) -> list[PatchCall]:
    """Patched calls read from the fx nodes' stack traces of a strict capture, where dynamo
    traced the wrapper instead of running it: the frame that called `_dynexport_patched_call`."""
    by_function = {patch.replacement.__code__.co_name: patch for patch in patches}
    found: dict[tuple, PatchCall] = {}
    for trace in stack_traces:
        frames = list(FRAME_RE.finditer(trace))
        for caller, wrapper, replaced in zip(frames, frames[1:], frames[2:], strict=False):
            patch = by_function.get(replaced["function"])
            if wrapper["function"] == "_dynexport_patched_call" and patch is not None:
                location = source_location(caller["file"], int(caller["line"]))
                found.setdefault((patch.name, location), PatchCall(patch, location))
    return list(found.values())

