"""Error text for people: the part of an exception that says what is wrong.

Runtimes bury the decisive sentence: OpenVINO's first lines are "Exception from
src/inference/src/cpp/core.cpp:..." and "Check '...' failed at ...", onnxruntime's reason
follows "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input" on a line
of its own ("index: 0 Got: 4 Expected: 1"). `summary` keeps those lines and drops the
location noise, so report.json, report.md and the console say why."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Lines that locate an error inside a library's sources without saying what it is.
_NOISE = re.compile(r"^(Exception from \S+:\d+:?|Check '.*' failed at \S+:?|\[ ?\w+ ?\]$)")


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """`exc` and its causes/contexts, outermost first, each once."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def chain_text(exc: BaseException) -> str:
    """The messages of `exc` and of every exception behind it, one after the other."""
    return "\n".join(str(e) for e in exception_chain(exc))


def summary(exc: BaseException, max_lines: int = 6, max_chars: int = 600,
            with_type: bool = True) -> str:
    """The informative lines of `exc`'s message (location noise dropped), at most `max_lines`
    lines and `max_chars` characters, prefixed with the exception's type name."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines()]
    informative = [line for line in lines if line and not _NOISE.match(line)]
    text = "\n".join(informative[:max_lines]) or (lines[0] if lines and lines[0] else "")
    if len(text) > max_chars:
        text = text[:max_chars - 1] + "…"
    if not with_type:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def one_line(exc: BaseException, max_chars: int = 300) -> str:
    """`summary` folded onto one line: for a sentence that quotes the error."""
    return summary(exc, max_chars=max_chars).replace("\n", " ")


def where_raised(exc: BaseException) -> str:
    """' at file.py:LINE' for the innermost frame of `exc`'s traceback, or ''."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    return f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
