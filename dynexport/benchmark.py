"""Benchmark stage: median latency of eager PyTorch and each converted runtime on the example."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from dynexport.inputs import Inputs
from dynexport.runtimes import Runner, to_numpy


@dataclass
class BenchmarkRecord:
    runtime: Literal["eager", "onnxruntime", "openvino"]
    median_ms: float
    runs: int


def median_ms(call: Callable[[], object], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def benchmark(eager: Callable[[Inputs], object], runners: list[Runner], inputs: Inputs,
              runs: int = 10) -> list[BenchmarkRecord]:
    """Time eager and every runner on the same inputs."""
    with torch.inference_mode():
        records = [BenchmarkRecord("eager", median_ms(lambda: eager(inputs), runs), runs)]
    feeds = to_numpy(inputs.tensors())
    for runner in runners:
        records.append(BenchmarkRecord(runner.name,
                                       median_ms(lambda r=runner: r.run(feeds), runs), runs))
    return records
