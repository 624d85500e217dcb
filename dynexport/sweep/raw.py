"""The raw-tools route, the baseline dynexport is compared with (`sweep --raw`): the script's
model and inputs through the plain libraries, nothing of dynexport's.

`torch.export.export` (its default, non-strict) with the script's dynamic_shapes, then
`torch.onnx.export(ep, dynamo=True)` + onnxruntime (2 intra-op threads), and
`openvino.convert_model(ep)` + `compile_model(..., {"INFERENCE_PRECISION_HINT": "f32"})`, each
run on the example and the probe inputs and compared with eager PyTorch: same output shapes
and max |a - b| <= ATOL + RTOL * max |eager|.

Run in a process of its own, like dynexport's:

    python -m dynexport.sweep.raw SCRIPT.py --json RESULT.json [SCRIPT_ARGS...]
"""

from __future__ import annotations

import argparse
import json
import re
import runpy
import sys
import time
from pathlib import Path
from typing import Any

ATOL, RTOL = 1e-4, 1e-3
ROUTES = ("onnx", "openvino")
RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}

_NOISE = re.compile(r"^(Exception from |Check '|Traceback|File \"|While validating node|"
                    r"\[ONNXRuntimeError\] : \d+ : \w+ : $|The above exception|$)|"
                    r"failed at src/.*:$")


def first_line(text: str) -> str:
    """The first line of an error text that says what is wrong: OpenVINO's and onnxruntime's
    first lines are often just where the exception was raised, and torch.onnx puts the cause
    under "## Exception summary" after a page of advice."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [line.strip() for line in text.splitlines()]
    return next((line for line in lines if not _NOISE.search(line)), lines[0] if lines else "")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(str(exc))}"[:300]


def _inputs(value: Any) -> tuple[tuple, dict]:
    if isinstance(value, dict):
        return (), dict(value)
    if (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple)
            and isinstance(value[1], dict)):
        return value
    return tuple(value) if isinstance(value, (tuple, list)) else (value,), {}


def _compare(expected: list, actual: list) -> dict[str, Any]:
    import numpy as np

    if len(expected) != len(actual):
        return {"passed": False, "error": f"{len(actual)} outputs, eager has {len(expected)}"}
    worst_abs, worst_rel, passed = 0.0, 0.0, True
    for want, got in zip(expected, actual, strict=True):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape:
            return {"passed": False, "error": f"shape {got.shape} != eager {want.shape}"}
        if want.size == 0:
            continue
        diff = np.abs(want.astype(np.float64) - got.astype(np.float64))
        scale = float(np.abs(want).max())
        worst_abs = max(worst_abs, float(diff.max()))
        worst_rel = max(worst_rel, float(diff.max()) / max(scale, 1e-12))
        passed = passed and float(diff.max()) <= ATOL + RTOL * scale
    return {"passed": passed, "max_abs": worst_abs, "max_rel": worst_rel}


def raw_tools(script: Path, script_args: list[str], out: Path) -> dict[str, Any]:
    """torch.export, then torch.onnx + onnxruntime and ov.convert_model + OpenVINO, each
    checked against eager on the example and the probe; `out` receives raw.onnx."""
    import numpy as np
    import onnxruntime
    import openvino
    import torch
    from torch.utils import _pytree as pytree

    sys.path.insert(0, str(script.parent))  # as dynexport does: imports next to the script
    sys.argv = [str(script), *script_args]
    namespace = runpy.run_path(str(script), run_name="__raw__")
    model = namespace["get_model"]()
    runs = {"example": _inputs(namespace["get_inputs"]())}
    if "get_probe_inputs" in namespace:
        runs["probe"] = _inputs(namespace["get_probe_inputs"]())
    feeds = {name: [t.numpy() for t in pytree.tree_leaves(inputs)
                    if isinstance(t, torch.Tensor)] for name, inputs in runs.items()}
    with torch.no_grad():
        eager = {name: [t.numpy() for t in pytree.tree_leaves(model(*args, **kwargs))]
                 for name, (args, kwargs) in runs.items()}
    result: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        args, kwargs = runs["example"]
        ep = torch.export.export(model, args, kwargs,
                                 dynamic_shapes=namespace.get("dynamic_shapes"))
        result["export"] = {"ok": True, "seconds": round(time.perf_counter() - start, 2)}
    except Exception as exc:
        result["export"] = {"ok": False, "error": _error(exc)}
        return result

    def route(name: str, convert, run) -> None:
        start = time.perf_counter()
        try:
            compiled = convert()
        except Exception as exc:
            result[name] = {"ok": False, "stage": "convert", "error": _error(exc)}
            return
        checks = {}
        for inputs, feed in feeds.items():
            try:
                outputs = run(compiled, feed)
                outputs = run(compiled, feed)  # repeated: the second run is the one compared
            except Exception as exc:
                result[name] = {"ok": False, "stage": f"run ({inputs})", "error": _error(exc)}
                return
            checks[inputs] = _compare(eager[inputs], outputs)
        result[name] = {"ok": all(c["passed"] for c in checks.values()), "stage": "compare",
                        "checks": checks, "seconds": round(time.perf_counter() - start, 2)}

    def onnx_convert():
        path = out / "raw.onnx"
        torch.onnx.export(ep, f=str(path), dynamo=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 2
        return onnxruntime.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])

    def onnx_run(session, feed):
        names = [i.name for i in session.get_inputs()]
        return session.run(None, dict(zip(names, feed, strict=True)))

    def openvino_convert():
        return openvino.Core().compile_model(openvino.convert_model(ep), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})

    def openvino_run(compiled, feed):
        outputs = compiled(feed)
        return [np.asarray(outputs[port]) for port in compiled.outputs]

    route("onnx", onnx_convert, onnx_run)
    route("openvino", openvino_convert, openvino_run)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynexport.sweep.raw",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("script", type=Path)
    parser.add_argument("--json", type=Path, required=True, help="where the result goes")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = raw_tools(args.script, args.script_args, args.json.parent)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
