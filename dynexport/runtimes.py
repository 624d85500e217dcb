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

from dynexport.inputs import Signature

DEFAULT_OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


class Runner(Protocol):
    name: str

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...


class _ByName:
    """Feeds a model by input name and reads it by output name, given the program's signature
    (inputs in `Inputs.tensors()` order); without one, by position. A model input the program
    does not have, or the reverse, is an error naming both lists."""

    def __init__(self, runtime: str, model_inputs: list[str], model_outputs: list[str],
                 signature: Signature | None):
        self.runtime, self.model_inputs = runtime, model_inputs
        self.signature = signature
        if signature is None:
            self.outputs = model_outputs
            return
        missing = [n for n in signature.inputs if n not in model_inputs]
        extra = [n for n in model_inputs if n not in signature.inputs]
        if missing or extra:
            raise ValueError(f"the {runtime} model's inputs {model_inputs} are not the "
                             f"program's {list(signature.inputs)}"
                             + (f"; it lacks {missing}" if missing else "")
                             + (f"; it has {extra} besides" if extra else ""))
        named = signature.outputs is not None and set(signature.outputs) <= set(model_outputs)
        self.outputs = list(signature.outputs) if named else model_outputs

    def feeds(self, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self.signature.inputs) if self.signature else self.model_inputs
        _check_count(self.runtime, len(names), len(inputs))
        return dict(zip(names, inputs, strict=True))


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


def race_threads() -> int:
    """Intra-op threads for verification's multi-threaded onnxruntime session: at least 4, more
    than a 2-core machine has, so that two threads of a racing kernel overlap there too."""
    return max(4, os.cpu_count() or 1)


class OnnxRuntimeRunner:
    """An onnxruntime CPU session, fed and read by the program's names (`signature`).

    For a few checking runs rather than timed ones: `spin=False` lets idle intra-op threads
    sleep instead of spinning (with more threads than cores, spinning threads take the cores
    from the working ones); `arena=False` returns each run's memory instead of keeping it in
    onnxruntime's arena, so two sessions one after the other do not hold both arenas
    (docs/performance.md, "Figures behind choices in the code")."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 signature: Signature | None = None, spin: bool = True, arena: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = arena
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.names = _ByName(self.name, [i.name for i in self.session.get_inputs()],
                             [o.name for o in self.session.get_outputs()], signature)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.names.outputs, self.names.feeds(inputs))


class OpenVINORunner:
    """A compiled OpenVINO model; precision pinned to f32 unless `config` says otherwise
    (CPUs with avx512_bf16 or AMX would otherwise compute in bf16)."""

    name = "openvino"

    def __init__(self, model_or_path, device: str = "CPU", config: dict | None = None,
                 signature: Signature | None = None):
        import openvino as ov

        core = ov.Core()
        model = (core.read_model(str(model_or_path))
                 if isinstance(model_or_path, (str, Path)) else model_or_path)
        config = DEFAULT_OPENVINO_CONFIG if config is None else config
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        # What benchmark records say it computes in; the precision stage names its variants.
        self.precision: str = str(config.get("INFERENCE_PRECISION_HINT", "default"))
        self.names = _ByName(self.name, [_any_name(i) for i in self.compiled.inputs],
                             [_any_name(o) for o in self.compiled.outputs], signature)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(self.names.feeds(inputs), share_inputs=False)
        by_name = {_any_name(output): output for output in self.compiled.outputs}
        return [np.array(results[by_name[name]]) for name in self.names.outputs]


def _any_name(port) -> str:
    """A port's name: the one its tensor was given (dynexport names every input and output),
    else the first of its names, else its index."""
    return port.get_any_name() if port.get_names() else str(port.get_index())


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
                config: dict | None = None, signature: Signature | None = None) -> Runner:
    """A runner of `runtime` ("onnxruntime" or "openvino") on the artifact at `artifact`, fed
    and read by `signature`'s names (by position without one)."""
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(artifact, signature=signature)
    return OpenVINORunner(Path(artifact), device, config, signature)


def _check_count(runtime: str, expected: int, given: int) -> None:
    if expected != given:
        raise ValueError(f"{runtime} model takes {expected} inputs but the example has {given} "
                         "tensors; an input the model does not use may have been dropped.")
