"""Run a step in a child process, so that a crash inside native code (a converter's `free():
invalid next size`, a plugin's segmentation fault) fails that step instead of killing dynexport
and losing the report.

The child is forked: it starts with the parent's memory (the captured program, the eager
outputs), so nothing is serialised on the way in and custom ops registered in the parent exist
there too. Only the step's return value (or exception) comes back, pickled through a pipe;
artifacts go to disk. Measured on this project's machines (torch 2.13, OpenVINO 2026.4,
onnxruntime 1.32): converting, compiling and running in a forked child works also after the
parent has run eager PyTorch, OpenVINO and onnxruntime itself. The child runs torch with one
thread: GNU OpenMP is not fork-safe once the parent has used it, and the child's work in torch is
tracing, not arithmetic.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Generic, TypeVar

from dynexport import progress
from dynexport.errors import format_traceback, summary

T = TypeVar("T")


class NativeCrash(RuntimeError):
    """The step's process died from a signal or exited without an answer."""

    def __init__(self, what: str, status: int):
        self.what, self.status = what, status
        if status < 0:
            name = signal.Signals(-status).name if -status in signal.Signals._value2member_map_ \
                else f"signal {-status}"
            how = f"crashed inside native code ({name}, exit status {status})"
        else:
            how = f"exited with status {status} without an answer"
        super().__init__(f"{what} {how}. dynexport ran it in a child process, so the report and "
                         "the artifacts of the other stages are kept; the crash is a bug of the "
                         "library that crashed (report it there with this model), or try "
                         "another target or version.")

    def __reduce__(self):
        return NativeCrash, (self.what, self.status)


class ChildError(RuntimeError):
    """An exception raised in the child that could not be sent back as itself."""

    def __init__(self, type_name: str, text: str, traceback_text: str):
        super().__init__(text)
        self.type_name = type_name
        self.traceback_text = traceback_text

    def __reduce__(self):
        return ChildError, (self.type_name, str(self), self.traceback_text)


def can_isolate() -> bool:
    return hasattr(os, "fork") and sys.platform != "darwin"  # macOS frameworks are not fork-safe


def run_isolated(step: Callable[[], T], what: str, enabled: bool = True) -> T:
    """`step()` in a forked child; its result, or its exception re-raised here, or NativeCrash
    naming `what` when the child dies. Runs in-process where forking is unavailable or
    `enabled` is False."""
    return start_isolated(step, what, enabled).result()


class Pending(Generic[T]):
    """A step running in a child process; `result()` waits for it."""

    def __init__(self, step: Callable[[], T], what: str, stage: str | None):
        self.what = what
        self.seconds: float | None = None  # the step's own time, measured in the child
        read_end, write_end = os.pipe()
        steps_read, steps_write = os.pipe()
        with warnings.catch_warnings():  # Python 3.12+ warns about forking a threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            os.close(read_end)
            os.close(steps_read)
            _child(step, write_end, steps_write)
        os.close(write_end)
        os.close(steps_write)
        self.answer = os.fdopen(read_end, "rb")
        self.relay = threading.Thread(target=_relay_steps, args=(steps_read, stage),
                                      daemon=True)
        self.relay.start()

    def result(self) -> T:
        with self.answer:
            payload = self.answer.read()  # before waiting: a large answer fills the pipe
        _, status = os.waitpid(self.pid, 0)
        self.relay.join()
        code = os.waitstatus_to_exitcode(status)
        if not payload:
            raise NativeCrash(self.what, code if code != 0 else 1)
        kind, value, self.seconds = pickle.loads(payload)
        if kind == "error":
            raise value
        return value


class _Done(Generic[T]):
    """The in-process stand-in of Pending: the step already ran."""

    def __init__(self, step: Callable[[], T]):
        start = time.perf_counter()
        try:
            self.value, self.error = step(), None
        except Exception as exc:
            self.value, self.error = None, exc
        self.seconds = time.perf_counter() - start

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value


def start_isolated(step: Callable[[], T], what: str, enabled: bool = True,
                   stage: str | None = None) -> Pending[T] | _Done[T]:
    """Start `step()` in a forked child and return at once (several children may run side by
    side: two conversions use both cores). `stage` names the stage the child's progress steps
    belong to. In-process, the step runs now."""
    if not (enabled and can_isolate()):
        return _Done(step)
    return Pending(step, what, stage)


def _relay_steps(steps_read: int, stage: str | None) -> None:
    """The child's progress steps, one name per line, to this process's listeners."""
    with os.fdopen(steps_read, "r", encoding="utf-8") as lines:
        for line in lines:
            progress.step(line.rstrip("\n"), stage)


def _child(step: Callable[[], object], write_end: int, steps_write: int) -> None:
    code = 0
    try:
        import faulthandler

        import torch

        faulthandler.disable()  # a crash here is reported by the parent, not dumped twice
        torch.set_num_threads(1)
        steps = os.fdopen(steps_write, "w", encoding="utf-8", buffering=1)
        progress.replace_listeners(
            lambda name, stage=None: steps.write(name.replace("\n", " ") + "\n"))
        start = time.perf_counter()
        try:
            answer = ("ok", step())
        except BaseException as exc:  # noqa: BLE001 - every exception goes back to the parent
            answer = ("error", _sendable(exc))
        seconds = time.perf_counter() - start
        try:
            payload = pickle.dumps((*answer, seconds))
        except Exception as exc:  # an unpicklable result is a dynexport bug; say so
            payload = pickle.dumps(("error", _sendable(exc), seconds))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
    except BaseException:  # noqa: BLE001 - the child must never unwind into the caller
        code = 70
    finally:
        os._exit(code)


def _sendable(exc: BaseException) -> BaseException:
    """`exc` itself when it survives pickling with its message, else a ChildError with it."""
    try:
        copy = pickle.loads(pickle.dumps(exc))
        if str(copy) == str(exc):
            return copy
    except Exception:  # noqa: BLE001 - many library exceptions do not pickle
        pass
    return ChildError(type(exc).__name__, summary(exc, max_lines=40, max_chars=4000,
                                                  with_type=False), format_traceback(exc))
