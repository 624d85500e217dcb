"""Verify stage: run each converted model on the example and the probe inputs and compare
every output with eager PyTorch's output on the same inputs (from the eager stage).

onnxruntime runs once at 1 intra-op thread and then at `race_threads()` (at least 4, more
than a 2-core machine has), several times when the model holds a kernel known to race
(backends/onnx_races.py): a race gives different outputs run to run. Every run counts against
eager (the worst one is the record), and each record says how far the runtime disagreed with
itself (`self_max_abs_diff`, `self_disagreement`). OpenVINO runs twice, f32 pinned.

Each runtime runs in a child process (isolation.py): a runtime that crashes while compiling
or running fails its own records, not dynexport."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynexport import progress
from dynexport.backends.onnx_races import has_racy_nodes
from dynexport.compare import Differences, as_array, json_number, label_agreement, percent
from dynexport.errors import summary
from dynexport.inputs import Inputs, Signature
from dynexport.isolation import ISOLATED, ChildLost, Isolation, run_isolated
from dynexport.names import InputKind, RuntimeName
from dynexport.runtimes import OnnxRuntimeRunner, Runner, open_runner, race_threads, to_numpy
from dynexport.tolerance import DEFAULT_TOLERANCE, Tolerance

# (rtol, atol as a fraction of the output's largest magnitude) per reference dtype. float64 gets
# float32's: OpenVINO's CPU plugin and several onnxruntime kernels compute float64 in float32.
_FLOAT_TOLERANCE = {
    np.dtype(np.float64): (1e-3, 1e-4),
    np.dtype(np.float32): (1e-3, 1e-4),
    np.dtype(np.float16): (1e-2, 1e-2),
}
# Integer outputs such as argmax labels may flip on near-ties of float logits.
MIN_INTEGER_AGREEMENT = 0.999

# OpenVINO's runs per input.
OPENVINO_REPEATS = 2
# onnxruntime's runs per input at race_threads(), after one at 1 thread: one, unless the model
# holds a kernel known to race (a run of a large model is seconds). A racing kernel does not
# race on every run; 8 runs catch one that shows in a third of runs with high probability
# (the rates measured: docs/decompositions.md, "index_put(accumulate=True)").
RACE_THREADS_REPEATS = 1
RACING_KERNEL_REPEATS = 8


@dataclass
class Comparison:
    """One output against its reference: differences, how many elements fall outside the
    tolerance, label agreement (compare.py), and, when it fails for a reason other
    than the values, that reason."""

    max_abs_diff: float
    max_rel_diff: float
    passed: bool
    label_agreement: float | None = None  # integer outputs: share of equal elements
    reason: str | None = None  # e.g. "shape (0, 4) instead of eager's (300, 4)"
    outside: int = 0  # elements outside the tolerance (integers: unequal)
    elements: int = 0

    @classmethod
    def of(cls, reference: Any, actual: Any,
           tolerance: Tolerance = DEFAULT_TOLERANCE) -> Comparison:
        """Compare `actual` with `reference` (arrays or tensors): differences and label
        agreement as compare.py defines them, judged by `tolerance`."""
        reference, actual = as_array(reference), as_array(actual)
        if reference.shape != actual.shape:
            return cls(float("inf"), float("inf"), False, reason=(
                f"shape {tuple(actual.shape)} instead of eager's {tuple(reference.shape)}"))
        integer = reference.dtype.kind in "biu"
        if reference.size == 0:
            return cls(0.0, 0.0, True, 1.0 if integer else None)
        found = Differences.of(reference, actual)
        max_abs, max_rel, diff = found.max_abs, found.max_rel, found.diff
        agreement = label_agreement(reference, actual, tolerance.argmax)
        if integer:
            return cls._by_labels(max_abs, max_rel, agreement, tolerance,
                                  int(np.count_nonzero(diff)), diff.size)
        rtol, atol = _FLOAT_TOLERANCE.get(reference.dtype,
                                          _FLOAT_TOLERANCE[np.dtype(np.float16)])
        rtol = rtol if tolerance.rtol is None else tolerance.rtol
        atol = atol if tolerance.atol is None else tolerance.atol
        bound = found.magnitude
        bound *= rtol  # in place: the tolerance array reuses the magnitude's memory
        bound += atol * max(found.scale, 1.0)
        outside = int(np.count_nonzero(diff > bound))
        if agreement is not None:  # judged by the argmax labels
            return cls._by_labels(max_abs, max_rel, agreement, tolerance, outside, diff.size)
        share = 1.0 if tolerance.share is None else tolerance.share
        return cls(max_abs, max_rel, _meets(1.0 - outside / diff.size, share),
                   outside=outside, elements=diff.size)

    @classmethod
    def _by_labels(cls, max_abs: float, max_rel: float, agreement: float, tolerance: Tolerance,
                   outside: int, elements: int) -> Comparison:
        """Judged by the share of labels equal to eager's: at least the tolerance's share,
        by default MIN_INTEGER_AGREEMENT (labels may flip on near-ties)."""
        share = MIN_INTEGER_AGREEMENT if tolerance.share is None else tolerance.share
        return cls(max_abs, max_rel, _meets(agreement, share), agreement, outside=outside,
                   elements=elements)


def compare(reference: Any, actual: Any, tolerance: Tolerance = DEFAULT_TOLERANCE) -> Comparison:
    return Comparison.of(reference, actual, tolerance)


@dataclass
class Verification:
    """One output of one runtime on one input, compared with eager PyTorch."""

    runtime: RuntimeName
    inputs: InputKind
    output: str
    max_abs_diff: float
    max_rel_diff: float
    passed: bool
    label_agreement: float | None = None
    error: str | None = None  # why it failed, when not by its values
    runtime_failed: bool = False  # the runtime raised or crashed: no values were compared
    outside: int = 0  # elements outside the tolerance (integers: unequal to eager's)
    elements: int = 0
    # The runtime against itself: the largest difference among its own outputs across its
    # sessions and repeats, and which ones disagreed ("1 thread vs 4 threads: max abs 2.3").
    self_max_abs_diff: float = 0.0
    self_disagreement: str | None = None

    COLUMNS = ("runtime", "inputs", "output", "max abs", "max rel", "labels agree",
               "outside tolerance", "passed", "differs run to run")

    @classmethod
    def from_comparison(cls, runtime: RuntimeName, inputs: InputKind, output: str,
                        comparison: Comparison) -> Verification:
        return cls(runtime, inputs, output, comparison.max_abs_diff, comparison.max_rel_diff,
                   comparison.passed, comparison.label_agreement, comparison.reason,
                   outside=comparison.outside, elements=comparison.elements)

    def to_json(self) -> dict:
        data = {"runtime": self.runtime, "inputs": self.inputs, "output": self.output,
                "max_abs_diff": json_number(self.max_abs_diff),
                "max_rel_diff": json_number(self.max_rel_diff), "passed": self.passed}
        if self.label_agreement is not None:
            data["label_agreement"] = self.label_agreement
        if self.elements:
            data["outside"], data["elements"] = self.outside, self.elements
        if self.error:
            data["error"] = self.error
        if self.self_max_abs_diff:
            data["self_max_abs_diff"] = json_number(self.self_max_abs_diff)
        if self.self_disagreement:
            data["self_disagreement"] = self.self_disagreement
        return data

    def cells(self) -> tuple[str, ...]:
        agreement = percent(self.label_agreement)
        verdict = "yes" if self.passed else "NO" + (f" ({self.error})" if self.error else "")
        outside = f"{self.outside:,} of {self.elements:,}" if self.outside else ""
        return (self.runtime, self.inputs, self.output, f"{self.max_abs_diff:.3g}",
                f"{self.max_rel_diff:.3g}", agreement, outside, verdict,
                self.self_disagreement or "")


@dataclass
class Session:
    """One way of running a converted model: how to open its runner, how many times it runs
    on each input, and the words naming its settings in a record's self_disagreement
    ("4 threads"; empty for a runtime run one way only)."""

    open: Callable[[], Runner]
    repeats: int = 1
    settings: str = ""

    def runs(self) -> str:
        """E.g. "8 runs at 4 threads"."""
        return f"{self.repeats} runs" + (f" at {self.settings}" if self.settings else "")


def verify(runtime: RuntimeName, expected: dict[InputKind, list[tuple[str, Any]]],
           sessions: Sequence[Session], inputs: dict[InputKind, Inputs],
           tolerances: dict[str, Tolerance] | None = None) -> list[Verification]:
    """Compare every run of `runtime`'s `sessions` with eager's `expected` outputs on every
    named input, each output judged by its entry in `tolerances` (default: the dtype's). The
    worst run is the record (multi-threaded kernels may race); the record also carries the
    runtime's disagreement with itself: each run against the first session's first run and
    against its own session's first run. One session is open at a time (an onnxruntime
    session of FlashOcc M0 holds 0.3 GB)."""
    feeds = {kind: to_numpy(values.tensors()) for kind, values in inputs.items()}
    runs = {kind: _Runs(runtime, kind, expected[kind], tolerances or {}) for kind in inputs}
    for session in sessions:
        try:
            runner = session.open()
        except Exception as exc:  # a model the runtime cannot compile fails every record
            return _failed_everywhere(runtime, expected, inputs, f"compiling: {summary(exc)}")
        for kind in inputs:
            progress.step(f"{runtime} on the {kind} input"
                          + (f" at {session.settings}" if session.settings else ""))
            runs[kind].add(session, runner, feeds[kind])
        del runner  # closed before the next one opens
    return [record for kind in inputs for record in runs[kind].records()]


class _Runs:
    """One input's runs of a runtime, compared as they come: per output, the worst record
    against eager and the largest differences among the runs themselves, by which settings
    ("1 thread vs 4 threads", "8 runs at 4 threads")."""

    def __init__(self, runtime: RuntimeName, kind: InputKind, expected: list[tuple[str, Any]],
                 tolerances: dict[str, Tolerance]):
        self.runtime, self.kind, self.expected, self.tolerances = (runtime, kind, expected,
                                                                   tolerances)
        self.worst: dict[str, Verification] = {}
        self.disagreements: dict[str, dict[str, float]] = {name: {} for name, _ in expected}
        self.first: tuple[Session, list[np.ndarray]] | None = None  # the very first run
        self.failed: list[Verification] | None = None

    def add(self, session: Session, runner: Runner, feeds: list[np.ndarray]) -> None:
        """Run `runner` session.repeats times on `feeds` (nothing more once a run failed)."""
        if self.failed is not None:
            return
        session_first: list[np.ndarray] | None = None
        for _ in range(session.repeats):
            try:
                outputs = runner.run(feeds)
            except Exception as exc:  # a runtime refusing an input is a verification failure
                self.failed = failed_records(self.runtime, self.kind, self.expected,
                                             summary(exc))
                return
            if len(outputs) != len(self.expected):
                self.failed = failed_records(
                    self.runtime, self.kind, self.expected,
                    f"{self.runtime} returned {len(outputs)} outputs, eager {len(self.expected)}")
                return
            earlier = []  # (what the pair is called, the earlier run's outputs)
            if self.first is not None and self.first[0] is not session:
                earlier.append((f"{self.first[0].settings} vs {session.settings}",
                                self.first[1]))
            if session_first is not None:
                earlier.append((session.runs(), session_first))
            for position, actual in enumerate(outputs):
                self._compare(position, actual, [(pair, previous[position])
                                                 for pair, previous in earlier])
            if self.first is None:
                self.first = (session, outputs)
            if session_first is None:
                session_first = outputs

    def _compare(self, position: int, actual: np.ndarray,
                 earlier: list[tuple[str, np.ndarray]]) -> None:
        name, reference = self.expected[position]
        identical = False  # to an earlier run, whose comparison with eager stands
        for pair, previous in earlier:
            found = _max_abs_diff(previous, actual)
            identical = identical or found == 0
            self.disagreements[name][pair] = max(found, self.disagreements[name].get(pair, 0.0))
        if identical:
            return
        comparison = Comparison.of(reference, actual,
                                   self.tolerances.get(name, DEFAULT_TOLERANCE))
        record = Verification.from_comparison(self.runtime, self.kind, name, comparison)
        if name not in self.worst or _worse(record, self.worst[name]):
            self.worst[name] = record

    def records(self) -> list[Verification]:
        """Each output's worst record, with the runtime's disagreement with itself."""
        if self.failed is not None:
            return self.failed
        for name, record in self.worst.items():
            found = {pair: value for pair, value in self.disagreements[name].items() if value}
            record.self_max_abs_diff = max(found.values(), default=0.0)
            record.self_disagreement = "; ".join(
                f"{pair}: max abs {value:.3g}" for pair, value in found.items()) or None
        return [self.worst[name] for name, _ in self.expected]


def _max_abs_diff(earlier: np.ndarray, later: np.ndarray) -> float:
    """Largest |earlier - later| (compare.py's: NaN or inf equal on both sides count 0);
    infinite when the shapes differ."""
    earlier, later = np.asarray(earlier), np.asarray(later)
    if earlier.shape != later.shape:
        return float("inf")
    if np.array_equal(earlier, later, equal_nan=True):  # the usual case, without a diff array
        return 0.0
    return Differences.of(earlier, later).max_abs


def _worse(record: Verification, previous: Verification) -> bool:
    """`record` replaces `previous` as an output's record: it fails where `previous` passed,
    or, judged alike, it has more elements outside the tolerance or a larger difference."""
    if record.passed != previous.passed:
        return not record.passed
    return (record.outside, record.max_abs_diff) > (previous.outside, previous.max_abs_diff)


def failed_records(runtime: RuntimeName, kind: InputKind, expected: list[tuple[str, Any]],
                   error: str) -> list[Verification]:
    return [Verification(runtime, kind, name, float("inf"), float("inf"), False, error=error,
                         runtime_failed=True) for name, _ in expected]


def _meets(share: float, required: float) -> bool:
    """`share` >= `required`, where both may carry float rounding (1 - 0.9998 is not 2e-4)."""
    return share >= required or math.isclose(share, required, rel_tol=1e-9)


# --- the stage ------------------------------------------------------------------------------

def verify_artifact(runtime: RuntimeName, artifact: Path, device: str,
                    expected: dict[InputKind, list[tuple[str, Any]]],
                    inputs: dict[InputKind, Inputs], isolation: Isolation = ISOLATED,
                    tolerances: dict[str, Tolerance] | None = None,
                    signature: Signature | None = None,
                    racing: bool | None = None) -> list[Verification]:
    """Open `artifact` in `runtime` and verify it, in a child process: a crash while compiling
    or running becomes failed records naming the signal. `racing`: whether the ONNX model
    holds a kernel known to race, where the caller knows (else the model is read for it)."""
    def opened_and_verified() -> list[Verification]:
        progress.step(f"{runtime}: compiling {artifact.name}")
        try:
            planned = verification_sessions(runtime, artifact, device, signature, racing)
        except Exception as exc:  # an unreadable model fails every record
            return _failed_everywhere(runtime, expected, inputs, f"reading: {summary(exc)}")
        return verify(runtime, expected, planned, inputs, tolerances)

    try:
        return run_isolated(opened_and_verified, f"{runtime} on {artifact.name}", isolation)
    except ChildLost as lost:
        return _failed_everywhere(runtime, expected, inputs, str(lost))


def verification_sessions(runtime: RuntimeName, artifact: Path, device: str = "CPU",
                          signature: Signature | None = None,
                          racing: bool | None = None) -> list[Session]:
    """How verification runs `artifact`: onnxruntime once at 1 intra-op thread, then at
    race_threads() (idle threads sleeping, as oversubscribed threads should)
    RACE_THREADS_REPEATS times, RACING_KERNEL_REPEATS when the model holds a kernel known to
    race, both sessions without a memory arena; OpenVINO OPENVINO_REPEATS times."""
    if runtime != "onnxruntime":
        return [Session(lambda: open_runner(runtime, artifact, device, signature=signature),
                        OPENVINO_REPEATS)]
    threads = race_threads()
    racing = has_racy_nodes(artifact) if racing is None else racing
    repeats = RACING_KERNEL_REPEATS if racing else RACE_THREADS_REPEATS
    return [Session(lambda: OnnxRuntimeRunner(artifact, 1, signature, arena=False), 1,
                    "1 thread"),
            Session(lambda: OnnxRuntimeRunner(artifact, threads, signature, spin=False,
                                              arena=False), repeats, f"{threads} threads")]


def _failed_everywhere(runtime: RuntimeName, expected: dict[InputKind, list[tuple[str, Any]]],
                       inputs: dict[InputKind, Inputs], error: str) -> list[Verification]:
    return [record for kind in inputs
            for record in failed_records(runtime, kind, expected[kind], error)]
