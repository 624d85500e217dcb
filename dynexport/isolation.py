"""Run a step in a child process, so that a crash inside native code (a converter's `free():
invalid next size`, a plugin's segmentation fault) or a hang fails that step instead of killing
or stalling dynexport and losing the report.

The child is forked: it starts with the parent's memory (the captured program, the eager
outputs), so nothing is serialised on the way in and custom ops registered in the parent exist
there too. Only the step's return value (or exception) comes back, pickled through a pipe;
artifacts go to disk. The child runs torch with one thread: GNU OpenMP is not fork-safe once the
parent has used it, and the child's work in torch is tracing, not arithmetic.

A forked child inherits objects whose native state belongs to threads that exist only in the
parent, so it must never touch them:
- Destructors: garbage the parent has not collected yet (an OpenVINO CompiledModel left in a
  reference cycle) would be collected by the child's garbage collector, and CompiledModel's
  destructor waits on a condition variable of the parent's executor threads forever. The
  parent freezes its objects (`gc.freeze`) around the fork, so the child's collector never
  looks at them; the child leaves with `os._exit`, so nothing inherited is finalised at exit.
- Locks: the parent's sys.stdout / sys.stderr may be rich's proxies of a live display whose
  refresh thread holds the display's lock at the moment of the fork; the child's first warning
  would wait for it forever. The child writes to fresh streams on the same file descriptors.
Every child has a deadline (`Isolation.deadline`): past it, the parent asks the child for its
Python stack (faulthandler on SIGUSR1), ends it and raises ChildHang with the stack and the
child's last progress step.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import select
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from dynexport import progress
from dynexport.errors import format_traceback, summary

T = TypeVar("T")

# Generous: a wide margin over every stage timed in docs/performance.md; a child still running
# after this is taken for hung.
DEFAULT_DEADLINE = 1800.0
# How long a hung child gets to write its stack after SIGUSR1 before it is killed.
_STACK_GRACE = 3.0


@dataclass(frozen=True)
class Isolation:
    """How steps run in child processes: at all (`enabled`; off, they run in-process), for how
    long at most (`deadline`, seconds), and where a hung child's full Python stack is kept
    (`stacks_dir`, under --debug; the error names the innermost frames either way)."""

    enabled: bool = True
    deadline: float = DEFAULT_DEADLINE
    stacks_dir: Path | None = None


ISOLATED = Isolation()  # the default: every child with DEFAULT_DEADLINE
IN_PROCESS = Isolation(enabled=False)


class ChildLost(RuntimeError):
    """The step's process ended without an answer: it crashed or it hung."""


class NativeCrash(ChildLost):
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


class ChildHang(ChildLost):
    """The step's process was still running at its deadline and was ended."""

    def __init__(self, what: str, deadline: float, last_step: str | None, stack: str,
                 stack_file: str | None = None):
        self.what, self.deadline, self.last_step = what, deadline, last_step
        self.stack, self.stack_file = stack, stack_file
        where = f" at step “{last_step}”" if last_step else ""
        frames = _innermost_frames(stack)
        told = (f" Its Python stack, innermost first:\n{frames}" if frames
                else " It wrote no Python stack (stuck before Python could answer).")
        kept = f" The whole stack is in {stack_file}." if stack_file else \
            " Run with --debug to keep its whole stack next to the report."
        super().__init__(
            f"{what} did not finish within {deadline:g} s{where} and was ended as hung; the "
            "report and the artifacts of the other stages are kept. If it is only slow, give it "
            "longer with --stage-timeout SECONDS; if it stops at the same place again, it is "
            f"stuck there (a lock or a wait that never returns).{told}{kept}")

    def __reduce__(self):
        return ChildHang, (self.what, self.deadline, self.last_step, self.stack, self.stack_file)


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


def run_isolated(step: Callable[[], T], what: str, isolation: Isolation = ISOLATED) -> T:
    """`step()` in a forked child; its result, or its exception re-raised here, or NativeCrash /
    ChildHang naming `what` when the child dies or outlives its deadline. Runs in-process where
    forking is unavailable or isolation is not enabled."""
    return start_isolated(step, what, isolation).result()


class Pending(Generic[T]):
    """A step running in a child process; `result()` waits for it, until its deadline."""

    def __init__(self, step: Callable[[], T], what: str, stage: str | None,
                 isolation: Isolation):
        self.what, self.isolation = what, isolation
        self.seconds: float | None = None  # the step's own time, measured in the child
        self.last_step: str | None = None  # the child's latest progress step
        self.deadline = time.monotonic() + isolation.deadline
        read_end, write_end = os.pipe()
        steps_read, steps_write = os.pipe()
        stack_fd, self.stack_path = tempfile.mkstemp(prefix="dynexport-stack-", suffix=".txt")
        gc.freeze()  # the child's collector must not finalise the parent's garbage
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns about forking a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                self.pid = os.fork()
        except BaseException:
            gc.unfreeze()
            raise
        if self.pid == 0:  # the child: never returns
            os.close(read_end)
            os.close(steps_read)
            _child(step, write_end, steps_write, stack_fd)
        gc.unfreeze()
        os.close(write_end)
        os.close(steps_write)
        os.close(stack_fd)
        self.answer = read_end
        self.relay = threading.Thread(target=self._relay_steps, args=(steps_read, stage),
                                      daemon=True)
        self.relay.start()

    def result(self) -> T:
        status = None
        try:
            payload = self._read_answer()  # before waiting: a large answer fills the pipe
            if payload is None:
                raise self._end_hung_child()
            _, status = os.waitpid(self.pid, 0)
        finally:
            if status is None:  # interrupted (Ctrl-C, a test's timeout): the child goes too
                self._kill()
            os.close(self.answer)
            self.relay.join()
            Path(self.stack_path).unlink(missing_ok=True)
        code = os.waitstatus_to_exitcode(status)
        if not payload:
            raise NativeCrash(self.what, code if code != 0 else 1)
        kind, value, self.seconds = pickle.loads(payload)
        if kind == "error":
            raise value
        return value

    def _read_answer(self) -> bytes | None:
        """The child's whole answer (b"" when it died without one), or None at the deadline."""
        chunks = []
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.answer], [], [], left)[0]:
                return None
            chunk = os.read(self.answer, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def _end_hung_child(self) -> ChildHang:
        """Ask the child for its Python stack, kill it, and say what it was doing."""
        stack_file = Path(self.stack_path)
        try:
            os.kill(self.pid, signal.SIGUSR1)
            waited = time.monotonic() + _STACK_GRACE
            while time.monotonic() < waited and not _stack_written(stack_file):
                time.sleep(0.05)
        finally:
            self._kill()
        stack = stack_file.read_text(errors="replace") if stack_file.is_file() else ""
        kept = None
        if self.isolation.stacks_dir is not None and stack:
            self.isolation.stacks_dir.mkdir(parents=True, exist_ok=True)
            kept_path = self.isolation.stacks_dir / f"hang_{_file_name(self.what)}.txt"
            kept_path.write_text(stack)
            kept = str(kept_path)
        return ChildHang(self.what, self.isolation.deadline, self.last_step, stack, kept)

    def _kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):  # already reaped
            pass

    def _relay_steps(self, steps_read: int, stage: str | None) -> None:
        """The child's progress steps, one name per line, to this process's listeners."""
        with os.fdopen(steps_read, "r", encoding="utf-8") as lines:
            for line in lines:
                self.last_step = line.rstrip("\n")
                progress.step(self.last_step, stage)


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


def start_isolated(step: Callable[[], T], what: str, isolation: Isolation = ISOLATED,
                   stage: str | None = None) -> Pending[T] | _Done[T]:
    """Start `step()` in a forked child and return at once (several children may run side by
    side: two conversions use both cores). `stage` names the stage the child's progress steps
    belong to. In-process, the step runs now."""
    if not (isolation.enabled and can_isolate()):
        return _Done(step)
    return Pending(step, what, stage, isolation)


def _child(step: Callable[[], object], write_end: int, steps_write: int, stack_fd: int) -> None:
    code = 0
    try:
        import faulthandler

        import torch

        faulthandler.disable()  # a crash here is reported by the parent, not dumped twice
        _fresh_standard_streams()
        torch.set_num_threads(1)
        _own_signal_stack()
        faulthandler.register(signal.SIGUSR1, file=stack_fd, all_threads=True)
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


def _fresh_standard_streams() -> None:
    """sys.stdout / sys.stderr as new objects on file descriptors 1 and 2: the inherited ones
    (or the live display's proxies of them) may hold a lock of a parent thread."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        try:
            setattr(sys, name, open(os.dup(fd), "w", buffering=1, encoding="utf-8",
                                    errors="backslashreplace"))
        except OSError:  # no such descriptor (a daemonised parent): keep writes harmless
            setattr(sys, name, open(os.devnull, "w"))


class _SignalStack(ctypes.Structure):  # stack_t of sigaltstack(2)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


_signal_stack_memory: ctypes.Array | None = None  # kept alive for the child's lifetime


def _own_signal_stack() -> None:
    """A fresh alternate signal stack for the child's thread, where faulthandler's SIGUSR1
    handler runs. The inherited one may point at freed memory: after NNCF's quantisation in the
    parent (tests/test_int8_accuracy_control.py), the main thread's pointed at unmapped memory,
    and the handler crashed instead of writing the stack (CHANGELOG, #27)."""
    global _signal_stack_memory
    _signal_stack_memory = ctypes.create_string_buffer(1 << 16)
    stack = _SignalStack(ctypes.addressof(_signal_stack_memory), 0, len(_signal_stack_memory))
    try:
        ctypes.CDLL(None).sigaltstack(ctypes.byref(stack), None)
    except (OSError, AttributeError):  # no such call here: keep the inherited stack
        pass


def _stack_written(path: Path) -> bool:
    """faulthandler has written the stack: a non-empty file that stopped growing for 0.1 s."""
    try:
        size = path.stat().st_size
        if not size:
            return False
        time.sleep(0.1)
        return path.stat().st_size == size
    except OSError:
        return False


def _innermost_frames(stack: str, count: int = 8) -> str:
    """The first `count` lines of the dump's current thread: faulthandler lists it as "Current
    thread", most recent call first, with a line such as "Garbage-collecting" above the frames
    when the thread was in the collector."""
    lines = stack.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), 0)
    frames = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        frames.append(line)
    return "\n".join(frames[:count])


def _file_name(what: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in what).strip("_")[:60] or "child"


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
