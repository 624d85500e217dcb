"""Runtimes that execute a converted artifact on numpy inputs; verification and benchmarks
share them so both measure the same thing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

DEFAULT_OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


class Runner(Protocol):
    name: str

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...


def to_numpy(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().cpu().contiguous().numpy() for t in tensors]


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


def default_threads() -> int:
    """Several intra-op threads, so that races in multi-threaded kernels show up."""
    return max(2, os.cpu_count() or 2)


class OnnxRuntimeRunner:
    """An onnxruntime CPU session; inputs are fed by position."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        _check_count(self.name, len(self.input_names), len(inputs))
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=False)))


class OpenVINORunner:
    """A compiled OpenVINO model; precision pinned to f32 unless `config` says otherwise
    (CPUs with avx512_bf16 or AMX would otherwise compute in bf16)."""

    name = "openvino"

    def __init__(self, model_or_path, device: str = "CPU", config: dict | None = None):
        import openvino as ov

        core = ov.Core()
        model = (core.read_model(str(model_or_path))
                 if isinstance(model_or_path, (str, Path)) else model_or_path)
        config = DEFAULT_OPENVINO_CONFIG if config is None else config
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        # What benchmark records say it computes in; the precision stage names its variants.
        self.precision: str = str(config.get("INFERENCE_PRECISION_HINT", "default"))

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        _check_count(self.name, len(self.compiled.inputs), len(inputs))
        results = self.request.infer(inputs, share_inputs=False)
        return [np.array(results[output]) for output in self.compiled.outputs]


# Virtual devices that pick or combine physical ones; valid wherever one physical device is.
_VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


def missing_device(device: str) -> str | None:
    """None when OpenVINO can compile for `device` here, else a sentence naming the devices
    this machine has."""
    import openvino as ov

    available = ov.Core().available_devices
    name = device.split(":", 1)[0].split(".", 1)[0]
    if name in _VIRTUAL_DEVICES or device in available or name in available:
        return None
    return (f"--device {device} is not on this machine; OpenVINO sees "
            f"{', '.join(available) or 'no device'}")


def open_runner(runtime: str, artifact: str | os.PathLike, device: str = "CPU",
                config: dict | None = None) -> Runner:
    """A runner of `runtime` ("onnxruntime" or "openvino") on the artifact at `artifact`."""
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(artifact)
    return OpenVINORunner(Path(artifact), device, config)


def _check_count(runtime: str, expected: int, given: int) -> None:
    if expected != given:
        raise ValueError(f"{runtime} model takes {expected} inputs but the example has {given} "
                         "tensors; an input the model does not use may have been dropped.")
