"""Benchmark stage: latency of eager PyTorch and each converted runtime on the example, median
and spread, in one process on one machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from dynexport.inputs import Inputs
from dynexport.runtimes import Runner, to_numpy


@dataclass
class BenchmarkRecord:
    runtime: Literal["eager", "onnxruntime", "openvino"]
    median_ms: float
    runs: int
    min_ms: float | None = None
    max_ms: float | None = None
    precision: str | None = None  # OpenVINO: f32 (pinned) or the --precision variant

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def timings(call: Callable[[], object], runs: int, warmup: int = 2) -> list[float]:
    """Milliseconds of `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def median_ms(call: Callable[[], object], runs: int, warmup: int = 2) -> float:
    return statistics.median(timings(call, runs, warmup))


def _record(runtime, times: list[float], precision: str | None = None) -> BenchmarkRecord:
    return BenchmarkRecord(runtime, round(statistics.median(times), 3), len(times),
                           round(min(times), 3), round(max(times), 3), precision)


def benchmark(eager: Callable[[Inputs], object], runners: list[Runner], inputs: Inputs,
              runs: int = 10) -> list[BenchmarkRecord]:
    """Time eager and every runner on the same inputs; OpenVINO records carry the precision
    the runner computes in."""
    with torch.inference_mode():
        records = [_record("eager", timings(lambda: eager(inputs), runs))]
    feeds = to_numpy(inputs.tensors())
    for runner in runners:
        records.append(_record(runner.name, timings(lambda r=runner: r.run(feeds), runs),
                               getattr(runner, "precision", None)))
    return records
