"""What a pipeline stage is: a name, the stages whose results it reads, whether a run asks for
it, and its work: a function from the run so far to the stage's own result. The pipeline walks
an ordered list of them; each stage module defines its own (its policy stays there), and
results flow forward only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from dynexport.isolation import Isolation
from dynexport.names import BACKENDS, StageName, StageStatus

T = TypeVar("T")


@dataclass
class Options:
    """What the user asked for on the command line."""

    out_dir: Path
    targets: tuple[str, ...] = BACKENDS
    verify: bool = True
    bench: bool = False
    device: str = "CPU"
    precision: str = "f32"  # f32: verification's model is the one that ships
    accuracy_budget: float = 1.0  # --precision auto: metric points below eager f32 allowed
    layouts: tuple[str, ...] = ()  # serving repositories to write
    keep_f32: tuple[str, ...] = ()  # FILE:LINE whose ops stay f32 under --precision
    no_patch: tuple[str, ...] = ()  # known-library patches not to apply (--no-patch)
    # conversions and runtimes in child processes, each with a deadline (isolation.py)
    isolation: Isolation = field(default_factory=Isolation)
    static: bool = False  # every dimension fixed to the example's (--static, for NPU)
    # Why the OpenVINO device cannot run here (absent from this machine); stages that compile
    # on it are skipped and the CLI exits 2 after writing the IR.
    device_missing: str | None = None


class StageFailed(RuntimeError):
    """A stage could not do its job; the message is the report's error text. `evidence` is what
    it found on the way (e.g. the ops a backend lacks), for the hazard step."""

    def __init__(self, message: str, evidence: Any = None):
        super().__init__(message)
        self.evidence = evidence

    def __reduce__(self):  # crosses the process boundary of isolated stages
        return StageFailed, (str(self), self.evidence)


class Started(Protocol):
    """Work a stage started that runs on (in a child process) while later stages start."""

    seconds: float | None  # how long the work itself took, once it is done

    def result(self) -> Any: ...


@dataclass(frozen=True)
class Request:
    """Whether a run asks for a stage: `wanted`; `skipped`, recorded with the `reason` (e.g.
    "--no-verify"); or `absent`, not part of this run at all (e.g. --bench not given)."""

    kind: Literal["wanted", "skipped", "absent"]
    reason: str = ""

    @staticmethod
    def skipped_unless(reason: str | None) -> Request:
        """Skipped for `reason` when there is one, else wanted."""
        return Request("skipped", reason) if reason else WANTED

    @staticmethod
    def when(wanted: bool) -> Request:
        return WANTED if wanted else ABSENT


WANTED = Request("wanted")
ABSENT = Request("absent")


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    `needs`: stages that must have succeeded; `needs_any`: at least one of these must have.
    `requested`: whether the run asks for this stage (from its options, its script).
    `work` returns the stage's result (kept by the run under the stage's name) or raises.
    `start`, where given, starts the same work and returns at once (a Started): the later stages
    start meanwhile (the two conversions run side by side in child processes and use both
    cores), and the run waits for the result when a stage reads it."""

    name: StageName
    work: Callable[[Run], Any]
    needs: tuple[StageName, ...] = ()
    needs_any: tuple[StageName, ...] = ()
    requested: Callable[[Run], Request] = lambda run: WANTED
    start: Callable[[Run], Started] | None = None


@dataclass
class StageRecord:
    name: StageName
    status: StageStatus
    seconds: float = 0.0
    artifact: str | None = None
    error: str | None = None

    COLUMNS = ("stage", "status", "seconds", "artifact / error")

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "seconds": self.seconds,
                "artifact": self.artifact, "error": self.error}

    def cells(self) -> tuple[str, ...]:
        return (self.name, self.status, f"{self.seconds:.2f}",
                self.error if self.error else (self.artifact or ""))


@dataclass
class Run:
    """The run so far: the options, each finished stage's result, and why others failed."""

    script_path: str
    script_args: list[str]
    options: Options
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    records: list[StageRecord] = field(default_factory=list)
    # stages started that run on, each with the function that waits for it and records it
    pending: dict[str, Callable[[], None]] = field(default_factory=dict)
    # values that more than one stage reads and none owns (e.g. eager on the validation data)
    shared: dict[str, Any] = field(default_factory=dict)

    def once(self, key: str, make: Callable[[], T]) -> T:
        """`make()`'s value, made by the first stage that asks for `key` in this run."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    def settle(self, name: StageName) -> None:
        """Wait for stage `name` if it is still running, and record how it went."""
        finish = self.pending.pop(name, None)
        if finish is not None:
            finish()

    def settle_all(self) -> None:
        while self.pending:
            self.settle(next(iter(self.pending)))

    def result(self, name: StageName, kind: type[T]) -> T | None:
        """The result of stage `name` if it succeeded, typed as `kind`."""
        self.settle(name)
        value = self.results.get(name)
        return value if isinstance(value, kind) else None

    def evidence(self, name: StageName, kind: type[T]) -> T | None:
        """What stage `name` left: its result, or what it found before failing."""
        self.settle(name)
        value = self.results.get(name)
        if value is None and name in self.errors:
            value = getattr(self.errors[name], "evidence", None)
        return value if isinstance(value, kind) else None

    def status(self, name: StageName) -> StageStatus | None:
        self.settle(name)
        return next((r.status for r in self.records if r.name == name), None)
