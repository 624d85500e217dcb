"""What a benchmark figure needs next to it: the CPU (model, cores, clock, the flags that pick
OpenVINO's and onnxruntime's kernels), the versions, the load, the machine's FP32 peak, and a
peak-memory sampler. Shared by benchmarks/flashocc.py and benchmarks/pipeline.py."""

from __future__ import annotations

import datetime
import os
import threading
import time
from pathlib import Path

from dynexport.report import installed_versions

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16",
         "amx_int8")
PACKAGES = ("torch", "onnx", "onnxruntime", "openvino", "nncf", "numpy")


def cpu_info() -> dict:
    """Model name, logical cores, clock (MHz, as /proc/cpuinfo reports it) and the flags of
    FLAGS the CPU has."""
    info = {"model": "unknown", "cores": os.cpu_count(), "mhz": None, "flags": []}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                info["model"] = value
            elif key == "cpu MHz" and info["mhz"] is None:
                info["mhz"] = float(value)
            elif key == "flags":
                present = set(value.split())
                info["flags"] = [flag for flag in FLAGS if flag in present]
    except OSError:
        pass
    return info


def fp32_flops_per_cycle(info: dict) -> int:
    """FP32 FLOPs per core per cycle, from the vector width: two FMA pipes of 8 lanes with
    AVX2, of 16 lanes with AVX-512 (Intel server parts). AMD Zen 4 executes AVX-512 on 256-bit
    pipes: 32, as AVX2."""
    if "avx512f" in info["flags"] and "AMD" not in info["model"]:
        return 64
    return 32 if "fma" in info["flags"] else 16


def nominal_fp32_peak_gflops(info: dict) -> float | None:
    """cores × clock × FLOPs per cycle (the clock /proc/cpuinfo reports, not a boost clock)."""
    if not info["mhz"]:
        return None
    return info["cores"] * info["mhz"] / 1e3 * fp32_flops_per_cycle(info)


def sgemm_gflops(size: int = 2048, seconds: float = 3.0) -> float:
    """Measured FP32 matrix-product throughput of torch (MKL) on all cores: the attainable
    peak, best of repeated size³ products."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def versions() -> dict[str, str | None]:
    return installed_versions(PACKAGES)


def describe(info: dict) -> str:
    return (f"{datetime.date.today()}, {info['model']}, {info['cores']} logical cores at "
            f"{info['mhz']:.0f} MHz, flags {' '.join(info['flags']) or 'none of ' + str(FLAGS)}"
            f"; load average {os.getloadavg()[0]:.2f}")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's resident memory every `interval` seconds in a thread; `peak`
    is the largest value since `reset()`."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def reset(self) -> int:
        self.peak = rss_bytes()
        return self.peak

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
