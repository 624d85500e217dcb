"""PointPillars (examples/pointpillars.py) end to end, one process: eager PyTorch vs onnxruntime vs
OpenVINO f32 and bf16 frame times, and the model's FLOPs and parameters.

    python benchmarks/pointpillars.py [--config kitti|tiny] [--runs 7] [--json FILE]

Loads the script with `--config C` (the CLI's own model and example cloud), converts it with
dynexport and times every runtime on the example cloud, interleaved (one call of each per
round, after 2 warm-up calls, so a busy neighbour slows all of them alike): median, min and
max. onnxruntime and OpenVINO use the default thread counts. "OpenVINO bf16" is the
INFERENCE_PRECISION_HINT bf16; on a CPU without avx512_bf16/AMX OpenVINO emulates it, so it
says nothing about bf16 hardware. FLOPs: torch's FlopCounterMode on the eager frame (2 per
multiply-add; the convolutions, linear layers and matmuls it counts), parameters: every
parameter of the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_info, describe
from torch.utils.flop_counter import FlopCounterMode

import dynexport
from dynexport.runtimes import OnnxRuntimeRunner, OpenVINORunner, to_numpy
from dynexport.script import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "pointpillars.py"


def flops_and_parameters(model: torch.nn.Module, args: tuple) -> tuple[int, int]:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*args)
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="kitti")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    script = load_script(SCRIPT, ["--config", args.config])
    model, example = script.model, script.example.args
    flops, parameters = flops_and_parameters(model, example)
    program = dynexport.export(model, example, dynamic_shapes=script.dynamic_shapes)
    feeds = to_numpy(list(example))
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "model.onnx"
        dynexport.to_onnx(program, onnx_path)
        ov_model = dynexport.to_openvino(program)
        runners = {
            "eager": lambda: model(*example),
            "onnxruntime": OnnxRuntimeRunner(onnx_path).run,
            "OpenVINO f32": OpenVINORunner(ov_model, "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"}).run,
            "OpenVINO bf16": OpenVINORunner(ov_model, "CPU",
                                            {"INFERENCE_PRECISION_HINT": "bf16"}).run,
        }
        calls = {name: (lambda run=run, name=name: run() if name == "eager" else run(feeds))
                 for name, run in runners.items()}
        times: dict[str, list[float]] = {name: [] for name in calls}
        with torch.no_grad():
            for round_ in range(args.runs + 2):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    if round_ >= 2:
                        times[name].append((time.perf_counter() - start) * 1e3)

    eager = statistics.median(times["eager"])
    result = {"config": args.config, "points": len(example[0]), "flops": flops,
              "parameters": parameters, "machine": describe(cpu_info()), "runs": args.runs,
              "rows": [{"runtime": name, "median_ms": statistics.median(t), "min_ms": min(t),
                        "max_ms": max(t), "speedup": eager / statistics.median(t)}
                       for name, t in times.items()]}
    print(f"{args.config}: {len(example[0])} points, {flops / 1e9:.2f} GFLOP, "
          f"{parameters / 1e6:.3f} M parameters; {describe(cpu_info())}")
    print("| runtime | median ms | min–max ms | × eager |\n|---|---:|---:|---:|")
    for row in result["rows"]:
        print(f"| {row['runtime']} | {row['median_ms']:.0f} | {row['min_ms']:.0f}–"
              f"{row['max_ms']:.0f} | {row['speedup']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
