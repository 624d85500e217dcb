"""bev_pool_v2 at FlashOcc M0 size: eager vs onnxruntime vs OpenVINO.

    python benchmarks/bev_pool.py [--runs 20] [--threads N]

Inputs come from a synthetic camera rig shaped like FlashOcc M0's: 6 cameras around the ego
car, 44 depth bins, a 16×44 feature map with 64 channels, pooled into a 200×200 grid of 0.4 m
cells (~154k points into ~26k occupied cells). Each row is one way to run the op; `max err`
compares with a float64 np.add.at reference, over all runs. Effective GB/s counts the bytes
the op must touch once: gathered depth values and feature rows, the three ranks, the
intervals, and the output grid. Prints a markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch

import dynexport
from dynexport.custom_ops import bev_pool_v2, prepare_bev_pool_v2

B, N, D, FH, FW, C, GRID = 1, 6, 44, 16, 44, 64, 200
SHAPE = (B, 1, GRID, GRID, C)


def frustum_inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)."""
    g = torch.Generator().manual_seed(seed)
    distance = 1.0 + 1.2 * torch.arange(D, dtype=torch.float64)  # metres, one per depth bin
    fov = math.radians(70)
    column = (torch.arange(FW, dtype=torch.float64) + 0.5) / FW * fov - fov / 2
    yaw = torch.arange(N, dtype=torch.float64).view(N, 1, 1, 1) * (2 * math.pi / N) + column
    # rows of one column see the ground at about the same place: they share cells
    r = distance.view(1, D, 1, 1) + 1.2 * torch.rand(N, D, FH, FW, generator=g,
                                                     dtype=torch.float64)
    cx = torch.floor((r * torch.cos(yaw) + 40) / 0.4).long()
    cy = torch.floor((r * torch.sin(yaw) + 40) / 0.4).long()
    inside = (cx >= 0) & (cx < GRID) & (cy >= 0) & (cy < GRID)
    n, _d, h, w = torch.meshgrid(*(torch.arange(s) for s in (N, D, FH, FW)), indexing="ij")
    ranks_depth = torch.arange(N * D * FH * FW).view(N, D, FH, FW)[inside]
    ranks_feat = ((n * FH + h) * FW + w)[inside]
    ranks_bev = (cy * GRID + cx)[inside]
    depth = torch.randn(B, N, D, FH, FW, generator=g).softmax(2)
    feat = torch.randn(B, N, FH, FW, C, generator=g)
    rd, rf, rb, starts, lengths = prepare_bev_pool_v2(ranks_depth, ranks_feat, ranks_bev)
    return depth, feat, rd, rf, rb, starts, lengths


class Pool(torch.nn.Module):
    def forward(self, depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths):
        return bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev, SHAPE, starts,
                           lengths)


class IndexPutAccumulate(torch.nn.Module):
    """The formulation dynexport avoids: torch.onnx lowers it to ScatterND(add)."""

    def forward(self, depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths):
        values = depth.reshape(-1)[ranks_depth.long()].unsqueeze(1) * feat.reshape(-1, C)[
            ranks_feat.long()]
        out = feat.new_zeros(B * GRID * GRID, C).index_put((ranks_bev.long(),), values,
                                                           accumulate=True)
        return out.view(*SHAPE).permute(0, 4, 1, 2, 3)


def gather_index_add(depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths):
    """The straightforward eager kernel, for comparison with dynexport's CSR matmul."""
    values = depth.reshape(-1).index_select(0, ranks_depth).unsqueeze(1) * feat.reshape(
        -1, C).index_select(0, ranks_feat)
    out = feat.new_zeros(B * GRID * GRID, C).index_add_(0, ranks_bev, values)
    return out.view(*SHAPE).permute(0, 4, 1, 2, 3).contiguous()


def reference(inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    depth, feat, rd, rf, rb, _starts, _lengths = inputs
    buf = np.zeros((B * GRID * GRID, C))
    np.add.at(buf, rb.long().numpy(), depth.double().numpy().reshape(-1)[rd.long().numpy()][
        :, None] * feat.double().numpy().reshape(-1, C)[rf.long().numpy()])
    return buf.reshape(SHAPE).transpose(0, 4, 1, 2, 3)


def measure(run: Callable[[], np.ndarray], runs: int, expected: np.ndarray
            ) -> tuple[float, float, float]:
    """(median ms, min ms, max abs error over all runs) after three warm-up runs."""
    for _ in range(3):
        run()
    times, error = [], 0.0
    for _ in range(runs):
        start = time.perf_counter()
        out = run()
        times.append((time.perf_counter() - start) * 1e3)
        error = max(error, float(np.abs(out - expected).max()))
    return statistics.median(times), min(times), error


def onnxruntime_runner(path: Path, inputs, threads: int) -> Callable[[], np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: session.run(None, feed)[0]


def openvino_runner(model: ov.Model, inputs, threads: int) -> Callable[[], np.ndarray]:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                      "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    feed = [t.numpy() for t in inputs]
    return lambda: request.infer(feed)[0]


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model} ({', '.join(shown) or 'no AVX2'}), {os.cpu_count()} logical cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    inputs = frustum_inputs()
    m, p = inputs[2].numel(), inputs[5].numel()
    expected = reference(inputs)
    size = B * GRID * GRID
    moved = 4 * (m + m * C + 3 * m + 2 * p + size * C)  # float32 / int32

    # Export with another M than the one measured, as a deployed model would be.
    other = frustum_inputs(seed=1)
    example = (*other[:2], *prepare_bev_pool_v2(*(t[:1000] for t in other[2:5])))
    dim_m, dim_p = torch.export.Dim("M", min=0), torch.export.Dim("P", min=0)
    dynamic = (None, None, {0: dim_m}, {0: dim_m}, {0: dim_m}, {0: dim_p}, {0: dim_p})
    program = dynexport.export(Pool(), example, dynamic_shapes=dynamic)
    scatter_nd_add = torch.export.export(IndexPutAccumulate(), example, dynamic_shapes=dynamic)

    rows: list[tuple[str, str, float, float, float]] = []

    def row(runtime: str, form: str, run: Callable[[], np.ndarray]) -> None:
        rows.append((runtime, form, *measure(run, args.runs, expected)))

    with torch.inference_mode():
        row("eager", "dynexport kernel: CSR sparse @ dense (MKL)",
            lambda: Pool()(*inputs).numpy())
        row("eager", "gather + index_add_ (for comparison)",
            lambda: gather_index_add(*inputs).numpy())
    with tempfile.TemporaryDirectory() as tmp:
        row("onnxruntime", "dynexport.to_onnx: blocked MatMul (8 points) + float64 carry",
            onnxruntime_runner(dynexport.to_onnx(program, Path(tmp) / "m.onnx"), inputs,
                               args.threads))
        plain = Path(tmp) / "plain.onnx"
        torch.onnx.export(program, dynamo=True, verbose=False).save(plain)
        row("onnxruntime", "plain torch.onnx.export(ep): ScatterElements(add)",
            onnxruntime_runner(plain, inputs, args.threads))
        trap = Path(tmp) / "trap.onnx"
        torch.onnx.export(scatter_nd_add, dynamo=True, verbose=False).save(trap)
        # Sorted ranks hide its race (only a run split between two threads' blocks can
        # collide); the same points in random order show it.
        shuffled = torch.randperm(m, generator=torch.Generator().manual_seed(0))
        unsorted = (*inputs[:2], *(t[shuffled] for t in inputs[2:5]), *inputs[5:])
        row("onnxruntime", "index_put(accumulate) → ScatterND(add), NOT used (points "
            "shuffled)", onnxruntime_runner(trap, unsorted, args.threads))
        row("OpenVINO", "dynexport.to_openvino: ScatterNDUpdate(sum)",
            openvino_runner(dynexport.to_openvino(program), inputs, args.threads))
        row("OpenVINO", "plain openvino.convert_model(ep): ScatterElementsUpdate(sum)",
            openvino_runner(ov.convert_model(program), inputs, args.threads))
        row("OpenVINO", "ONNX frontend on dynexport.to_onnx's model",
            openvino_runner(ov.Core().read_model(Path(tmp) / "m.onnx"), inputs, args.threads))

    print(f"bev_pool_v2, FlashOcc M0: M = {m} points, P = {p} occupied cells of "
          f"{GRID}×{GRID}, C = {C}; {moved / 1e6:.1f} MB touched per call")
    print(f"{datetime.date.today()}, {cpu_description()}, "
          f"{args.threads} thread{'s' if args.threads != 1 else ''}, "
          f"median of {args.runs} runs; torch {torch.__version__}, onnxruntime "
          f"{ort.__version__}, openvino {ov.__version__.split('-')[0]}; load average "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    print("| runtime | formulation | median ms | min ms | effective GB/s (median) "
          "| max abs err |")
    print("|---|---|---:|---:|---:|---:|")
    for runtime, form, median, fastest, error in rows:
        print(f"| {runtime} | {form} | {median:.1f} | {fastest:.1f} | "
              f"{moved / median / 1e6:.2f} | {error:.1e} |")


if __name__ == "__main__":
    main()
