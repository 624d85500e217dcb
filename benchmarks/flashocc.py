"""FlashOcc end to end, one process, one machine: eager PyTorch vs onnxruntime vs OpenVINO at
f32, at its default precision (bf16 where the CPU has it) and INT8 (NNCF; skipped with a note
when NNCF is not installed).

    python benchmarks/flashocc.py [--cases m0:graph m0:precomputed m1:precomputed ...]
                                  [--runs 7] [--json FILE] [--plot FILE.png]

Each case loads examples/flashocc.py with `--config C --ranks R` (the CLI's own inputs),
converts it with dynexport, and then:

* times every runtime on the example, interleaved (one call of each per round, so a busy
  neighbour slows all of them alike): median, min and max over the rounds;
* compares outputs on the example and the probe: f32 runtimes against eager, reduced
  precisions against OpenVINO f32 (label agreement, largest logit difference, and the f32
  top-1/top-2 margin of the labels that flip);
* FLOPs (torch's FlopCounterMode, examples/flashocc/flops.py), the rate each runtime reaches
  and its share of the machine's FP32 peak (nominal: cores × clock × FLOPs per cycle, and
  measured: torch's sgemm);
* where the time goes: OpenVINO's per-layer counters (PERF_COUNT) and onnxruntime's profiler,
  summed by layer type;
* bev_pool_v2 alone, on the frame's own arguments, in every runtime: its share of the frame;
* INT8 against the default precision, and the INT8 IR's layers that run outside i8/u8
  kernels (PERF_COUNT, by name);
* resident memory: each runtime's growth when created and warmed up, and the process peak.
"""

from __future__ import annotations

import argparse
import ast
import collections
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import (
    PeakRSS,
    cpu_info,
    describe,
    fp32_flops_per_cycle,
    nominal_fp32_peak_gflops,
    rss_bytes,
    sgemm_gflops,
    versions,
)

import dynexport
from dynexport.backends.openvino import save_openvino
from dynexport.precision import apply_precision
from dynexport.runtimes import OnnxRuntimeRunner, OpenVINORunner, to_numpy
from dynexport.script import load_script

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "flashocc.py"
sys.path.insert(0, str(SCRIPT.parent))
PUBLISHED_GMACS = {"m0": 154.1, "m1": 248.57}  # FlashOCC README "FLOPs" (mmcv: multiply-adds)


class Eager:
    name = "eager"

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = self.model(*(torch.from_numpy(f) for f in feeds))
        return [out["occupancy"].numpy(), out["logits"].numpy()]


def _seconds(call: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def convert(script, folder: Path) -> dict:
    """ExportedProgram, model.onnx and the OpenVINO IR, timed."""
    program, export_s = _seconds(lambda: dynexport.export(
        script.model, script.example.args, script.example.kwargs, script.dynamic_shapes))
    onnx_path, onnx_s = _seconds(lambda: dynexport.to_onnx(program, folder / "model.onnx"))
    xml, openvino_s = _seconds(lambda: save_openvino(dynexport.to_openvino(program),
                                                     folder / "openvino"))
    return {"onnx": onnx_path, "xml": xml,
            "seconds": {"torch.export + decompose": export_s, "ONNX": onnx_s,
                        "OpenVINO": openvino_s}}


def nncf_available() -> bool:
    """Whether NNCF imports (it is optional: the `precision` extra)."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def runners(script, paths: dict, folder: Path, calibration: list, int8: bool = True
            ) -> tuple[dict, dict, dict | None]:
    """Every runtime, its memory growth, and the int8 quantisation record (None when `int8`
    is False: no INT8 runtimes)."""
    made, memory = {}, {}
    feeds = to_numpy(script.example.tensors())

    def add(label: str, factory: Callable[[], object]) -> None:
        gc.collect()
        before = rss_bytes()
        runner = factory()
        runner.run(feeds)
        made[label] = runner
        memory[label] = rss_bytes() - before

    add("eager", lambda: Eager(script.model))
    add("onnxruntime", lambda: OnnxRuntimeRunner(paths["onnx"]))
    add("OpenVINO f32", lambda: OpenVINORunner(paths["xml"]))
    add("OpenVINO default", lambda: OpenVINORunner(paths["xml"], config={}))
    if not int8:
        return made, memory, None
    quantized, quantize_s = _seconds(lambda: apply_precision(
        "int8", paths["xml"], folder, {"example": script.example}, calibration, runs=1))
    add("OpenVINO INT8", lambda: OpenVINORunner(quantized.artifact))
    add("OpenVINO INT8 + default", lambda: OpenVINORunner(quantized.artifact, config={}))
    quantization = {"seconds": quantize_s, "samples": quantized.calibration_samples,
                    "not_quantized": len(quantized.not_quantized or [])}
    return made, memory, quantization


def interleaved(made: dict, feeds: list[np.ndarray], runs: int, warmup: int = 2
                ) -> dict[str, list[float]]:
    for runner in made.values():
        for _ in range(warmup):
            runner.run(feeds)
    times: dict[str, list[float]] = {label: [] for label in made}
    for _ in range(runs):
        for label, runner in made.items():
            start = time.perf_counter()
            runner.run(feeds)
            times[label].append((time.perf_counter() - start) * 1e3)
    return times


def compare(made: dict, inputs: dict) -> dict:
    """f32 runtimes against eager, reduced precisions against OpenVINO f32."""
    results = {}
    for kind, values in inputs.items():
        feeds = to_numpy(values.tensors())
        outputs = {label: runner.run(feeds) for label, runner in made.items()}
        # (labels, logits) and, with ranks in the graph, the cell of every frustum point
        for label, (labels, logits, *cells) in outputs.items():
            if label == "eager":
                continue
            reference = "eager" if label in ("onnxruntime", "OpenVINO f32") else "OpenVINO f32"
            ref_labels, ref_logits, *ref_cells = outputs[reference]
            flipped = labels != ref_labels
            top2 = np.sort(ref_logits, axis=-1)[..., -2:]
            margin = top2[..., 1] - top2[..., 0]
            results.setdefault(label, {})[kind] = {
                "against": reference,
                "label_agreement": float(1 - flipped.mean()),
                "max_logit_diff": float(np.abs(logits - ref_logits).max()),
                "logit_scale": float(np.abs(ref_logits).max()),
                "flipped_max_margin": float(margin[flipped].max()) if flipped.any() else 0.0,
                "median_margin": float(np.median(margin)),
            }
            if cells and ref_cells:  # eager's runner here returns labels and logits
                results[label][kind]["points_moved"] = int((cells[0] != ref_cells[0]).sum())
    return results


# Profiled inferences per PERF_COUNT table, after a warm-up; each layer's median is kept: a
# single inference once gave the INT8 IR's 1x1 convolutions 2,222 ms, which five inferences
# in another process put at 182-189 ms.
PROFILED_RUNS = 3


def _layer_ms(xml: Path, config: dict, feeds: list[np.ndarray]) -> dict[tuple, float]:
    """(name, type, exec type) of every layer → its median ms (PERF_COUNT) over PROFILED_RUNS
    inferences after a warm-up."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {**config, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer(feeds)
    runs: dict[tuple, list[float]] = collections.defaultdict(list)
    for _ in range(PROFILED_RUNS):
        request.infer(feeds)
        for info in request.profiling_info:
            key = (info.node_name, info.node_type, info.exec_type)
            runs[key].append(info.real_time.total_seconds() * 1e3)
    return {key: statistics.median(ms) for key, ms in runs.items()}


def openvino_profile(xml: Path, config: dict, feeds: list[np.ndarray]) -> dict:
    """Milliseconds per layer type (PERF_COUNT; each layer's median, see _layer_ms)."""
    by_type: collections.Counter = collections.Counter()
    for (_, kind, exec_type), ms in _layer_ms(xml, config, feeds).items():
        by_type[f"{kind} ({exec_type})"] += ms
    return dict(by_type.most_common())


def int8_layers(xml: Path, config: dict, feeds: list[np.ndarray], top: int = 12) -> dict:
    """Where an INT8 IR's time goes (PERF_COUNT; each layer's median, see _layer_ms): ms and
    count of the layers that took time, those whose kernel runs on integers (exec type with
    i8/u8) and those outside, and the slowest layers outside, by name."""
    int8_ms, int8_count, outside = 0.0, 0, []
    for (name, kind, exec_type), ms in _layer_ms(xml, config, feeds).items():
        if ms <= 0:  # optimised out, or fused into another layer
            continue
        if "i8" in exec_type.lower() or "u8" in exec_type.lower():
            int8_ms, int8_count = int8_ms + ms, int8_count + 1
        else:
            outside.append((ms, name, kind, exec_type))
    outside.sort(reverse=True)
    return {"int8_ms": int8_ms, "int8_count": int8_count,
            "outside_ms": sum(o[0] for o in outside), "outside_count": len(outside),
            "outside_top": [{"ms": ms, "name": name, "type": kind, "exec": exec_type}
                            for ms, name, kind, exec_type in outside[:top]]}


def onnxruntime_profile(path: Path, feeds: list[np.ndarray]) -> dict:
    """Milliseconds per op type of one run after a warm-up (SessionOptions.enable_profiling),
    and per top-level module (from the nodes' torch.onnx name scopes)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = max(2, os.cpu_count() or 2)
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = dict(zip([i.name for i in session.get_inputs()], feeds, strict=True))
        session.run(None, feed)
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    scopes = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        names = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        scopes[node.name] = names[1] if len(names) > 2 else "(top level)"
    # The second run only: events after the first run's end.
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    second = runs[-1]["ts"] if runs else 0
    by_type: collections.Counter = collections.Counter()
    by_module: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if event["ts"] < second:
            continue
        ms = event["dur"] / 1e3
        by_type[event["args"]["op_name"]] += ms
        by_module[scopes.get(event["name"].removesuffix("_kernel_time"), "?")] += ms
    return {"by_op": dict(by_type.most_common()), "by_module": dict(by_module.most_common())}


class _Call:
    def __init__(self, run: Callable[[list[np.ndarray]], object]):
        self.run = run


def bev_pool_alone(script, folder: Path, runs: int) -> dict:
    """bev_pool_v2 on the arguments the example frame passes it, in each runtime."""
    from flashocc import view_transformer

    from dynexport.custom_ops import bev_pool_v2

    seen = []

    def record(*args):
        seen.append(args)
        return bev_pool_v2(*args)

    original, view_transformer.bev_pool_v2 = view_transformer.bev_pool_v2, record
    try:
        with torch.inference_mode():
            script.model(*script.example.args, **script.example.kwargs)
    finally:
        view_transformer.bev_pool_v2 = original
    depth, feat, rd, rf, rb, shape, starts, lengths = seen[0]

    class Pool(torch.nn.Module):
        def forward(self, depth, feat, rd, rf, rb, starts, lengths):
            return bev_pool_v2(depth, feat, rd, rf, rb, shape, starts, lengths)

    args = tuple(t.clone() for t in (depth, feat, rd, rf, rb, starts, lengths))
    program = dynexport.export(Pool(), args)
    onnx_path = dynexport.to_onnx(program, folder / "pool.onnx")
    xml = save_openvino(dynexport.to_openvino(program), folder / "pool")
    pool = {"eager": _Call(lambda feeds: Pool()(*(torch.from_numpy(f) for f in feeds))),
            "onnxruntime": OnnxRuntimeRunner(onnx_path),
            "OpenVINO f32": OpenVINORunner(xml),
            "OpenVINO default": OpenVINORunner(xml, config={})}
    with torch.inference_mode():
        times = interleaved(pool, to_numpy(list(args)), runs)
    return {"points": int(rd.numel()), "intervals": int(starts.numel()),
            "median_ms": {label: statistics.median(t) for label, t in times.items()}}


def run_case(config: str, ranks: str, runs: int, peak_gflops: float, sgemm: float,
             int8: bool = True) -> dict:
    from flashocc import CONFIGS
    from flashocc.flops import count_flops

    script = load_script(SCRIPT, ["--config", config, "--ranks", ranks])
    calibration = script.calibration() if script.calibration else [script.example,
                                                                    script.probe]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = convert(script, folder)
        made, memory, quantization = runners(script, paths, folder, calibration, int8)
        feeds = to_numpy(script.example.tensors())
        times = interleaved(made, feeds, runs)
        accuracy = compare(made, {"example": script.example, "probe": script.probe})
        profiles = {
            "OpenVINO f32": openvino_profile(paths["xml"], {"INFERENCE_PRECISION_HINT": "f32"},
                                             feeds),
            "OpenVINO default": openvino_profile(paths["xml"], {}, feeds),
            "onnxruntime": onnxruntime_profile(paths["onnx"], feeds),
        }
        int8_profile = None
        if int8:
            int8_xml = folder / "openvino_int8" / "model.xml"
            profiles["OpenVINO INT8"] = openvino_profile(
                int8_xml, {"INFERENCE_PRECISION_HINT": "f32"}, feeds)
            int8_profile = int8_layers(int8_xml, {}, feeds)
        default_precision = made["OpenVINO default"].compiled.get_property(
            "INFERENCE_PRECISION_HINT").get_type_name()  # f32, bf16, f16
        del made
        gc.collect()
        pool = bev_pool_alone(script, folder, runs)
    flops = count_flops(CONFIGS[config])
    medians = {label: statistics.median(t) for label, t in times.items()}
    return {
        "config": config, "ranks": ranks, "runs": runs,
        "conversion_seconds": paths["seconds"], "quantization": quantization,
        "default_precision": default_precision,
        "times_ms": times, "median_ms": medians,
        "speedup_vs_eager": {label: medians["eager"] / m for label, m in medians.items()},
        "memory_growth_bytes": memory,
        "accuracy": accuracy, "profiles": profiles, "int8_layers": int8_profile,
        "bev_pool": pool,
        "flops": flops.flops, "gmacs": flops.gmacs, "published_gmacs": PUBLISHED_GMACS.get(config),
        "gflops_per_s": {label: flops.flops / m / 1e6 for label, m in medians.items()},
        "share_of_nominal_peak": {label: flops.flops / m / 1e6 / peak_gflops
                                  for label, m in medians.items()},
        "share_of_sgemm": {label: flops.flops / m / 1e6 / sgemm for label, m in medians.items()},
    }


def markdown(results: list[dict], machine: dict) -> str:
    lines = []
    labels = list(results[0]["median_ms"])
    for r in results:
        lines += [f"### {r['config'].upper()}, ranks {r['ranks']} "
                  f"({r['gmacs']:.1f} G multiply-adds; FlashOCC: {r['published_gmacs']})", "",
                  "| runtime | median ms | min–max ms | × eager | GFLOP/s | % FP32 peak "
                  "(nominal / sgemm) | memory MB |", "|---|---:|---:|---:|---:|---:|---:|"]
        for label in labels:
            t = r["times_ms"][label]
            lines.append(
                f"| {label} | {r['median_ms'][label]:.0f} | {min(t):.0f}–{max(t):.0f} | "
                f"{r['speedup_vs_eager'][label]:.2f} | {r['gflops_per_s'][label]:.0f} | "
                f"{100 * r['share_of_nominal_peak'][label]:.0f} / "
                f"{100 * r['share_of_sgemm'][label]:.0f} | "
                f"{r['memory_growth_bytes'][label] / 1e6:.0f} |")
        lines += ["", "| runtime | against | inputs | labels agreeing | max logit diff "
                  "(of max) | largest f32 margin among flipped labels |",
                  "|---|---|---|---:|---:|---:|"]
        for label, kinds in r["accuracy"].items():
            for kind, a in kinds.items():
                lines.append(f"| {label} | {a['against']} | {kind} | "
                             f"{100 * a['label_agreement']:.3f} % | {a['max_logit_diff']:.3g} "
                             f"({a['logit_scale']:.0f}) | {a['flipped_max_margin']:.3g} |")
        pool = r["bev_pool"]
        lines += ["", f"bev_pool_v2 alone (M = {pool['points']:,} points, "
                  f"P = {pool['intervals']:,} intervals):", "",
                  "| runtime | bev_pool_v2 ms | frame ms | share |", "|---|---:|---:|---:|"]
        for label, ms in pool["median_ms"].items():
            frame = r["median_ms"][label]
            lines.append(f"| {label} | {ms:.1f} | {frame:.0f} | {100 * ms / frame:.1f} % |")
        if "OpenVINO INT8" in r["median_ms"]:
            default, int8 = r["median_ms"]["OpenVINO default"], r["median_ms"]["OpenVINO INT8"]
            both = r["median_ms"]["OpenVINO INT8 + default"]
            lines += ["", f"INT8 vs default ({r['default_precision']}): {int8:.0f} ms vs "
                      f"{default:.0f} ms, {default / int8:.2f} × (INT8 + default: {both:.0f} ms, "
                      f"{default / both:.2f} ×)"]
        layers = r.get("int8_layers")
        if layers:
            total = layers["int8_ms"] + layers["outside_ms"]
            lines += ["", f"INT8 IR under the default hint, per layer (PERF_COUNT): "
                      f"{layers['int8_ms']:.0f} ms in {layers['int8_count']} i8/u8 kernels, "
                      f"{layers['outside_ms']:.0f} ms ({100 * layers['outside_ms'] / total:.1f} %) "
                      f"in {layers['outside_count']} layers outside; the slowest outside:", "",
                      "| layer | type | exec | ms | share |", "|---|---|---|---:|---:|"]
            lines += [f"| {o['name']} | {o['type']} | {o['exec']} | {o['ms']:.1f} | "
                      f"{100 * o['ms'] / total:.1f} % |" for o in layers["outside_top"]]
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results[0]["median_ms"])
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        medians = [r["median_ms"][label] for label in labels]
        lows = [m - min(r["times_ms"][label]) for m, label in zip(medians, labels, strict=True)]
        highs = [max(r["times_ms"][label]) - m for m, label in zip(medians, labels, strict=True)]
        positions = [j + (i - (len(results) - 1) / 2) * width for j in range(len(labels))]
        bars = ax.bar(positions, medians, width, yerr=[lows, highs], capsize=3,
                      label=f"{r['config'].upper()}, ranks {r['ranks']}")
        for bar, label, high in zip(bars, labels, highs, strict=True):
            ax.annotate(f"{r['speedup_vs_eager'][label]:.1f}×",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height() + high),
                        ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(labels)), [label.replace("OpenVINO ", "OpenVINO\n")
                                       for label in labels])
    ax.set_ylabel("ms per frame (median; bars: min–max)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["m0:graph", "m0:precomputed",
                                                      "m1:precomputed"],
                        help="CONFIG:RANKS pairs (configs m0, m1, tiny; ranks graph, "
                             "precomputed)")
    parser.add_argument("--runs", type=int, default=7, help="timed rounds per runtime")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--plot", type=Path, help="write a PNG of the frame times here")
    parser.add_argument("--replot", type=Path, help="only redraw --plot from this --json file")
    args = parser.parse_args(argv)
    if args.replot:
        saved = json.loads(args.replot.read_text())
        plot(saved["results"], args.plot, _title(saved["machine"], saved["versions"]))
        return
    torch.manual_seed(0)
    machine = cpu_info()
    sgemm = sgemm_gflops()
    nominal = nominal_fp32_peak_gflops(machine) or sgemm
    int8 = nncf_available()
    if not int8:
        print("INT8 skipped: NNCF is not installed (pip install nncf, or the `precision` "
              "extra).", file=sys.stderr)
    results, load_start = [], os.getloadavg()[0]
    with PeakRSS() as peak:
        for case in args.cases:
            config, ranks = case.split(":")
            results.append(run_case(config, ranks, args.runs, nominal, sgemm, int8))
            print(f"{case} done, load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
            gc.collect()
    header = (f"{describe(machine)}\n" + ", ".join(f"{k} {v}" for k, v in versions().items() if v)
              + f"\nFP32 peak: nominal {nominal:.0f} GFLOP/s ({machine['cores']} cores × "
              f"{machine['mhz']:.0f} MHz × {fp32_flops_per_cycle(machine)} FLOP/cycle), "
              f"measured sgemm {sgemm:.0f} GFLOP/s; process peak RSS {peak.peak / 1e9:.2f} GB; "
              f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
              "end\n")
    print(header)
    print(markdown(results, machine))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "versions": versions(),
                                         "nominal_peak_gflops": nominal, "sgemm_gflops": sgemm,
                                         "peak_rss": peak.peak, "results": results}, indent=1,
                                        default=str))
    if args.plot:
        plot(results, args.plot, _title(machine, versions()))


def _title(machine: dict, found: dict) -> str:
    return (f"FlashOcc, batch 1, 6 cameras: {machine['model']}, {machine['cores']} cores "
            f"({' '.join(machine['flags'])})\ntorch {found['torch']}, onnxruntime "
            f"{found['onnxruntime']}, OpenVINO {found['openvino']}; "
            "× eager above each bar (min–max whiskers)")


if __name__ == "__main__":
    main()
