"""Benchmark stage: latency of eager PyTorch and each converted runtime on the example, median
and spread, in one process on one machine."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from dynexport import progress
from dynexport.inputs import Inputs, Signature
from dynexport.isolation import ISOLATED, ChildLost, Isolation, run_isolated
from dynexport.runtimes import open_runner, timings, to_numpy


@dataclass
class BenchmarkRecord:
    runtime: Literal["eager", "onnxruntime", "openvino"]
    median_ms: float
    runs: int
    min_ms: float | None = None
    max_ms: float | None = None
    precision: str | None = None  # OpenVINO: f32 (pinned) or the --precision variant

    error: str | None = None  # the runtime crashed or raised; no timing

    COLUMNS = ("runtime", "precision", "median ms", "min ms", "max ms", "runs")

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(self).items()
                if value is not None and key != "error"}

    def cells(self) -> tuple[str, ...]:
        if self.error:
            return (self.runtime, self.precision or "", self.error, "", "", "0")
        return (self.runtime, self.precision or "", f"{self.median_ms:.2f}", _ms(self.min_ms),
                _ms(self.max_ms), str(self.runs))


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _record(runtime, times: list[float], precision: str | None = None) -> BenchmarkRecord:
    return BenchmarkRecord(runtime, round(statistics.median(times), 3), len(times),
                           round(min(times), 3), round(max(times), 3), precision)


def time_eager(eager: Callable[[Inputs], object], inputs: Inputs,
               runs: int = 10) -> BenchmarkRecord:
    with torch.inference_mode():
        return _record("eager", timings(lambda: eager(inputs), runs))


def time_artifact(runtime: str, artifact: str | Path, inputs: Inputs, device: str = "CPU",
                  config: dict | None = None, precision: str | None = None,
                  runs: int = 10, isolation: Isolation = ISOLATED,
                  signature: Signature | None = None) -> BenchmarkRecord:
    """Open `artifact` in `runtime` and time it on `inputs`, in a child process (a crash or
    a hang is recorded, not fatal). OpenVINO records carry the precision it computes in."""
    feeds = to_numpy(inputs.tensors())

    def measure() -> BenchmarkRecord:
        progress.step(f"timing {runtime}" + (f" {precision}" if precision else ""))
        runner = open_runner(runtime, artifact, device, config, signature)
        return _record(runtime, timings(lambda: runner.run(feeds), runs),
                       precision or getattr(runner, "precision", None))

    try:
        return run_isolated(measure, f"{runtime} on {Path(artifact).name}", isolation)
    except ChildLost as lost:
        return BenchmarkRecord(runtime, 0.0, 0, precision=precision, error=str(lost))
