"""Named steps inside a stage ("verify: openvino on probe"), for the live display and the
pipeline benchmark's breakdown.

Stages call `step(name)` as they go; whoever listens (the CLI's display, a benchmark) gets
the name, and the time between two steps is the first one's. In a child process
(isolation.py) the steps travel back to the parent's listener through a pipe."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str, "str | None"], None]
_listeners: list[Listener] = []


def step(name: str, stage: str | None = None) -> None:
    """Announce that `name` starts now (and the previous step of the stage has ended).
    `stage`: which stage it belongs to, where several run at once (None: the latest)."""
    for listener in _listeners:
        listener(name, stage)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def replace_listeners(listener: Listener | None) -> None:
    """In a forked child: drop the parent's listeners (their display is not here) and
    forward to `listener` instead."""
    _listeners[:] = [listener] if listener else []
