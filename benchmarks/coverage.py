"""Zoo coverage: dynexport against the raw tools, model by model (issue #14, item 4).

    python benchmarks/coverage.py              # every examples/zoo/*.py; writes docs/coverage.md
    python benchmarks/coverage.py resnet vit   # some of them (docs/coverage.md not written)

For each zoo script, two runs, each in its own subprocess:

(a) dynexport: `python -m dynexport --out DIR SCRIPT`; its exit status, wall time, the stages of
    report.json, its verification rows, hazards and unsupported ops;
(b) the raw tools on the same model and inputs, written plainly here: `torch.export.export`
    (its default, non-strict) with the script's dynamic_shapes, then
    `torch.onnx.export(ep, dynamo=True)` + onnxruntime (2 intra-op threads), and
    `openvino.convert_model(ep)` + `compile_model(..., {"INFERENCE_PRECISION_HINT": "f32"})`,
    each run on the example and the probe inputs and compared with eager PyTorch: same output
    shapes and max |a - b| <= ATOL + RTOL * max |eager|.

The rule checked: where the raw ONNX route (or the raw OpenVINO route) works on its own,
dynexport's onnx stage (openvino stage) succeeds and its onnxruntime (openvino) verification
passes on both inputs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ZOO = REPO / "examples" / "zoo"
DOC = REPO / "docs" / "coverage.md"
ATOL, RTOL = 1e-4, 1e-3
ROUTES = ("onnx", "openvino")
RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}
TIMEOUT = 900  # seconds per subprocess

# What the failures are (measured; reproducers in the comments of the scripts and tests).
NOTES = [
    "**efficientnet, OpenVINO**: transformers' EfficientNet pools with "
    "`nn.AvgPool2d(config.hidden_dim, ceil_mode=True)`, here a 320-wide kernel over the final "
    "2x2 map (at the released 600 px, 2560 over 19x19). PyTorch (ceil mode clips the window) "
    "and onnxruntime accept it; OpenVINO's AvgPool shape inference rejects a kernel larger "
    "than the input (`Kernel after dilation has size (dim: 320) larger than the data shape "
    "after padding (dim: 2)`), at compile/first inference, through the raw "
    "`ov.convert_model`. Reproducer: `torch.export.export(nn.AvgPool2d(320, "
    "ceil_mode=True), (torch.randn(2, 8, 2, 2),))` then `ov.convert_model` + compile. "
    "dynexport decomposes an `avg_pool2d` whose window covers the whole unpadded input into "
    "the spatial mean it computes (dynexport/decompositions/pooling.py), so its OpenVINO route "
    "converts and verifies.",
    "**swin, ONNX**: with a dynamic batch, torch.onnx's decomposition step fails on an "
    "`aten.view` of a non-contiguous tensor (`Cannot view a tensor with shape "
    "torch.Size([4*s6, 16, 2, 16]) and strides (512, 16, 256, 1) as a tensor with shape "
    "(4*s6, 16, 32)`), with the raw `torch.onnx.export(ep, dynamo=True)` as with dynexport. "
    "OpenVINO converts and verifies.",
    "**bert**: transformers' masking_utils.py:354 tests `padding_mask.all()` only when not "
    "exporting (`not (is_torchdynamo_exporting() or ...)`): eager (dynexport's hazard watch) "
    "evaluates it, export never does. dynexport reported that as an `error` "
    "`data_dependent_branch` and exited 1 where the raw tools pass (first zoo run, "
    "2026-12-03 03:30); it now reports a `warning` (a branch on data that strict or non-strict "
    "capture did not evaluate cannot be in the graph), and `attention_mask.shape[-1]` of a 2-D "
    "mask is no longer taken for a mask length.",
    "**detector_nms, raw routes**: the raw routes fail by design and dynexport passes: plain "
    "`torch.onnx.export(ep)` has no translation for `dynexport::nms` (greedy NMS has no aten "
    "decomposition; `dynexport.to_onnx` passes the `NonMaxSuppression` translation), and "
    "plain `ov.convert_model(ep)` on a raw `torch.export.export` program with the "
    "data-dependent number of boxes fails with `PendingUnbackedSymbolNotFound`.",
    "**mobilenet_v2, image size**: transformers' TF-style padding (`apply_tf_padding`) reads "
    "`int(features.shape[-2])`, so a dynamic height/width is specialised (strict and "
    "non-strict capture fail, draft capture takes ~3 min and reports a `shape_specialization` "
    "warning without file or line); the zoo script keeps the image size static.",
    "MobileNetV3 is not in transformers; timm and torchvision have it but neither imports "
    "here: the torchvision 0.28.0 wheel for torch 2.13.0 is built against CUDA torch "
    "(`operator torchvision::nms does not exist` with torch 2.13.0+cpu) and timm 1.0.31 "
    "imports torchvision at `import timm` (timm/layers/create_norm.py: "
    "`from torchvision.ops.misc import FrozenBatchNorm2d`). The zoo's mobile network is "
    "transformers' MobileNetV2.",
    "Seconds are wall times (subprocess start to end, imports included) on a 2-core machine "
    "shared with other jobs: compare them with each other only roughly.",
]


def zoo_scripts() -> list[Path]:
    """The zoo's scripts (files starting with `_` are their shared helpers)."""
    return sorted(path for path in ZOO.glob("*.py") if not path.stem.startswith("_"))


# --- (b) the raw tools, run in a child process ---------------------------------------------

def summary(text: str) -> str:
    """The first line of an error text that says what is wrong: OpenVINO's and onnxruntime's
    first lines are often just where the exception was raised, and torch.onnx puts the cause
    under "## Exception summary" after a page of advice."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    noise = re.compile(r"^(Exception from |Check '|Traceback|File \"|While validating node|"
                       r"\[ONNXRuntimeError\] : \d+ : \w+ : $|The above exception|$)|"
                       r"failed at src/.*:$")
    lines = [line.strip() for line in text.splitlines()]
    return next((line for line in lines if not noise.search(line)), lines[0] if lines else "")


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {summary(str(exc))}"[:300]


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


def raw_tools(script: Path, out: Path) -> dict[str, Any]:
    """torch.export, then torch.onnx + onnxruntime and ov.convert_model + OpenVINO, each
    checked against eager on the example and the probe."""
    import numpy as np
    import onnxruntime
    import openvino
    import torch
    from torch.utils import _pytree as pytree

    sys.path.insert(0, str(script.parent))  # as dynexport does: imports next to the script
    namespace = runpy.run_path(str(script), run_name="__zoo__")
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
        result["export"] = {"ok": False, "error": _first_line(exc)}
        return result

    def route(name: str, convert, run) -> None:
        start = time.perf_counter()
        try:
            compiled = convert()
        except Exception as exc:
            result[name] = {"ok": False, "stage": "convert", "error": _first_line(exc)}
            return
        checks = {}
        for inputs, feed in feeds.items():
            try:
                outputs = run(compiled, feed)
                outputs = run(compiled, feed)  # repeated: the second run is the one compared
            except Exception as exc:
                result[name] = {"ok": False, "stage": f"run ({inputs})",
                                "error": _first_line(exc)}
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


# --- (a) dynexport, and the comparison ------------------------------------------------------

def _subprocess(command: list[str]) -> tuple[int, float, str]:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
        code, tail = done.returncode, (done.stderr or done.stdout)[-2000:]
    except subprocess.TimeoutExpired:
        code, tail = -1, f"timed out after {TIMEOUT} s"
    return code, round(time.perf_counter() - start, 1), tail


def dynexport_run(script: Path, out: Path) -> dict[str, Any]:
    code, seconds, tail = _subprocess([sys.executable, "-m", "dynexport", "--out", str(out),
                                       str(script)])
    result: dict[str, Any] = {"exit": code, "seconds": seconds}
    if not (out / "report.json").is_file():
        result["error"] = tail.strip().splitlines()[-1] if tail.strip() else "no report"
        return result
    return {**result, **read_report(out / "report.json")}


def read_report(path: Path) -> dict[str, Any]:
    """What the table needs from a dynexport report.json."""
    report = json.loads(path.read_text())
    result: dict[str, Any] = {"strategy": report["capture"]["strategy"]}
    result["stages"] = {s["name"]: {"status": s["status"], "error": s["error"]}
                        for s in report["stages"]}
    result["hazards"] = [f"{h['severity']} {h['category']}"
                         + (f" at {Path(h['file']).name}:{h['line']}" if h["file"] else "")
                         for h in report["hazards"]]
    result["unsupported_ops"] = [f"{u['op']} ({u['backend']})" for u in report["unsupported_ops"]]
    for route in ROUTES:
        rows = [v for v in report["verification"] if v["runtime"] == RUNTIME[route]]
        errors = [f"{v['inputs']}: {summary(v['error'])}" for v in rows if v.get("error")]
        stage = result["stages"].get(route, {}).get("status")
        result[route] = {"stage": stage, "rows": len(rows), "errors": errors,
                         "verified": bool(rows) and all(v["passed"] for v in rows),
                         "max_abs": max((v["max_abs_diff"] for v in rows
                                         if v["max_abs_diff"] is not None), default=None)}
    return result


def measure(script: Path, work: Path, reuse: bool = False) -> dict[str, Any]:
    """Both runs on one script; with `reuse`, the raw tools' result of an earlier run in
    `work` is kept."""
    name = script.stem
    (work / name / "raw").mkdir(parents=True, exist_ok=True)
    raw_json = work / name / "raw.json"
    if not (reuse and raw_json.is_file()):
        raw_json.unlink(missing_ok=True)
        code, seconds, tail = _subprocess([sys.executable, __file__, "--raw", str(script),
                                           "--json", str(raw_json)])
        raw = json.loads(raw_json.read_text()) if raw_json.is_file() else {
            "export": {"ok": False, "error": f"raw run exited {code}: "
                       + (tail.strip().splitlines() or ["?"])[-1]}}
        raw["seconds"] = seconds
        raw_json.write_text(json.dumps(raw, indent=1))
    raw = json.loads(raw_json.read_text())
    raw.setdefault("seconds", None)
    dx = dynexport_run(script, work / name / "dynexport")
    return {"model": name, "dynexport": dx, "raw": raw, "rule": rule(dx, raw)}


def rule(dx: dict[str, Any], raw: dict[str, Any]) -> dict[str, str]:
    """Per route: where the raw route works, dynexport's stage and verification must work
    too; `exit`: where every raw route works, dynexport must exit 0 (no failed run, no error
    hazard the raw tools' own comparison on both inputs contradicts)."""
    verdict = {}
    for route in ROUTES:
        raw_ok = raw.get(route, {}).get("ok", False)
        dx_ok = dx.get(route, {}).get("stage") == "ok" and dx.get(route, {}).get("verified")
        verdict[route] = "n/a" if not raw_ok else ("ok" if dx_ok else "VIOLATED")
    if all(raw.get(route, {}).get("ok", False) for route in ROUTES):
        verdict["exit"] = "ok" if dx["exit"] == 0 else f"VIOLATED ({dx['exit']})"
    else:
        verdict["exit"] = "n/a"
    return verdict


def _cell_raw(raw: dict, route: str) -> str:
    if not raw["export"]["ok"]:
        return "- (export failed)"
    entry = raw.get(route, {})
    if entry.get("ok"):
        worst = max(c["max_abs"] for c in entry["checks"].values())
        return f"pass ({worst:.1e})"
    if entry.get("stage") == "compare":
        bad = [k for k, c in entry["checks"].items() if not c["passed"]]
        return f"mismatch on {', '.join(bad)}"
    return f"FAIL ({entry.get('stage', '?')})"


def _cell_dx(dx: dict, route: str) -> str:
    entry = dx.get(route)
    if not entry or entry["stage"] is None:
        return "-"
    if entry["stage"] != "ok":
        return "FAIL (convert)"
    if not entry["rows"]:
        return "converted, not verified"
    if entry["verified"]:
        return f"pass ({entry['max_abs']:.1e})"
    return "FAIL (run)" if entry.get("errors") else "mismatch"


def table(results: list[dict]) -> str:
    head = ("| model | dynexport exit | capture | dynexport ONNX+ORT | raw ONNX+ORT | "
            "dynexport OpenVINO | raw OpenVINO | raw torch.export | rule | hazards | "
            "dynexport s | raw s |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        dx, raw = r["dynexport"], r["raw"]
        hazards = "; ".join(dx.get("hazards", []) + dx.get("unsupported_ops", [])) or "none"
        rule = ", ".join(f"{k} {v}" for k, v in r["rule"].items())
        lines.append(" | ".join([
            f"| {r['model']}", str(dx["exit"]), str(dx.get("strategy")),
            _cell_dx(dx, "onnx"), _cell_raw(raw, "onnx"),
            _cell_dx(dx, "openvino"), _cell_raw(raw, "openvino"),
            "ok" if raw["export"]["ok"] else "FAIL", rule, hazards,
            str(dx["seconds"]), f"{raw['seconds'] or '-'} |"]))
    return "\n".join(lines)


def failures(results: list[dict]) -> list[str]:
    """One line per failure: which run, which stage, the error's first meaningful line."""
    lines = []
    for r in results:
        dx, raw = r["dynexport"], r["raw"]
        for stage, entry in dx.get("stages", {}).items():
            if entry["status"] == "failed":
                lines.append(f"- **{r['model']}**, dynexport `{stage}`: "
                             f"{summary(entry['error'] or '')[:300]}")
        for route in ROUTES:
            for error in dx.get(route, {}).get("errors", [])[:1]:
                lines.append(f"- **{r['model']}**, dynexport {RUNTIME[route]} on {error[:300]}")
        if "error" in dx:
            lines.append(f"- **{r['model']}**, dynexport: {dx['error']}")
        if not raw["export"]["ok"]:
            lines.append(f"- **{r['model']}**, raw `torch.export.export`: "
                         f"{raw['export']['error']}")
        for route in ROUTES:
            entry = raw.get(route, {})
            if entry and not entry.get("ok"):
                what = entry.get("error") or json.dumps(entry.get("checks"))
                lines.append(f"- **{r['model']}**, raw {route} ({entry.get('stage')}): {what}")
    return lines or ["- none"]


def write_doc(results: list[dict], versions: dict[str, str | None]) -> None:
    text = [
        "# Zoo coverage: dynexport against the raw tools",
        "",
        "Generated by `python benchmarks/coverage.py` (rerun it to refresh this page) on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
        f"{platform.machine()}, Python {platform.python_version()}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "Each model of `examples/zoo/` (random weights, small inputs, no download) is run "
        "(a) through `python -m dynexport` and (b) through the raw tools: "
        "`torch.export.export` with the script's `dynamic_shapes`, then "
        "`torch.onnx.export(ep, dynamo=True)` + onnxruntime (2 threads) and "
        "`openvino.convert_model(ep)` + OpenVINO CPU pinned to f32, compared with eager "
        f"PyTorch on the example and the probe input (same shapes, max abs diff <= {ATOL} + "
        f"{RTOL} x max |eager|). A cell shows pass with the largest abs diff, the stage that "
        "failed, or the input that mismatched. `rule`: where a raw route works on its own, "
        "dynexport's corresponding stage and verification must work too, and where both raw "
        "routes work dynexport must exit 0 (`exit`); `n/a`: the raw route failed, nothing "
        "to check.",
        "",
        table(results),
        "",
        "## Failures",
        "",
        *failures(results),
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in NOTES],
        "",
    ]
    DOC.write_text("\n".join(text))


def versions() -> dict[str, str | None]:
    from dynexport.report import installed_versions

    found = installed_versions()
    from importlib import metadata

    found["transformers"] = metadata.version("transformers")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="zoo script stems (default: all)")
    parser.add_argument("--work", type=Path, help="where artifacts go (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the raw tools' results already in --work")
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw:  # the child process of (b)
        args.json.write_text(json.dumps(raw_tools(args.raw, args.json.parent / "raw"), indent=1))
        return 0
    scripts = zoo_scripts()
    if args.models:
        scripts = [s for s in scripts if s.stem in args.models]
    work = args.work or Path(tempfile.mkdtemp(prefix="dynexport-coverage-"))
    results = []
    for script in scripts:
        print(f"{script.stem} ...", flush=True)
        results.append(measure(script, work, args.reuse))
    (work / "coverage.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    print("\n".join(failures(results)))
    if not args.models:
        write_doc(results, versions())
        print(f"written: {DOC.relative_to(REPO)}")
    print(f"artifacts: {work}")
    return 1 if any("VIOLATED" in " ".join(r["rule"].values()) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
