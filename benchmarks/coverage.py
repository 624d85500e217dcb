"""Zoo coverage: dynexport against the raw tools, model by model (issue #14, item 4).

A thin call of `python -m dynexport sweep --raw` (docs/sweep.md) that writes docs/coverage.md:

    python benchmarks/coverage.py              # every examples/zoo/*.py and the flagships of
                                               # examples/flagships.toml; writes docs/coverage.md
    python benchmarks/coverage.py resnet vit   # some of them (docs/coverage.md not written)
    python benchmarks/coverage.py --work DIR   # keep the sweep there: a re-run only runs the
                                               # scripts whose inputs changed (--force: all)

For each zoo script, two runs, each in its own subprocess (dynexport.sweep.run): (a)
`python -m dynexport` on it, (b) the raw tools on the same model and inputs
(dynexport/sweep/raw.py). The rule checked: where the raw ONNX route (or the raw OpenVINO
route) works on its own, dynexport's onnx stage (openvino stage) succeeds and its onnxruntime
(openvino) verification passes on both inputs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from dynexport.report import installed_versions
from dynexport.sweep.cli import main as sweep
from dynexport.sweep.plan import scripts_in
from dynexport.sweep.table import RAW_METHOD, failures, markdown_table

REPO = Path(__file__).resolve().parent.parent
ZOO = REPO / "examples" / "zoo"
FLAGSHIPS = REPO / "examples" / "flagships.toml"  # the lidar flagship, small config
DOC = REPO / "docs" / "coverage.md"
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
    "dynexport rewrites a ceil-mode pool that a backend fails or computes differently (here "
    "the kernel larger than the map) as explicit padding and a floor-mode pool whose kernel "
    "fits (dynexport/decompositions/pooling.py), so its OpenVINO route converts and verifies.",
    "**swin, ONNX**: the raw `torch.onnx.export(ep, dynamo=True)` fails on an `aten.view` of "
    "a non-contiguous tensor (`Cannot view a tensor with shape torch.Size([4*s6, 16, 2, 16]) "
    "and strides (512, 16, 256, 1) as a tensor with shape (4*s6, 16, 32)`), with a static "
    "batch too. CPU attention returns its query's layout (flash kernel) unless the mask "
    "requires grad (math kernel, contiguous); Swin's mask comes from a parameter, and "
    "torch.onnx's re-trace (no grad: flash, so the `.contiguous()` after the transpose is "
    "dropped and the `reshape` becomes a `view`) and its type-promotion pass (grad: math) "
    "disagree. dynexport copies such an attention's output to contiguous memory "
    "(dynexport/decompositions/attention_layout.py), so its ONNX route converts and verifies "
    "with the batch dynamic. OpenVINO converts and verifies either way.",
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
    "torchvision's four detectors (fasterrcnn, retinanet, ssdlite, maskrcnn), which fail at "
    "the raw `torch.export.export` and convert and verify through dynexport's known-library "
    "patches, are swept in a venv with torchvision: docs/coverage_torchvision.md.",
    "Seconds are wall times (subprocess start to end, imports included) on a 2-core machine "
    "shared with other jobs: compare them with each other only roughly.",
]


def write_doc(rows: list[dict], versions: dict[str, str | None]) -> None:
    text = [
        "# Zoo coverage: dynexport against the raw tools",
        "",
        "Generated by `python benchmarks/coverage.py` (rerun it to refresh this page; it runs "
        "`python -m dynexport sweep examples/zoo --raw`, docs/sweep.md) on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
        f"{platform.machine()}, Python {platform.python_version()}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "Each model of `examples/zoo/` and the lidar flagship at its tiny config "
        "(`examples/flagships.toml`; random weights, small inputs, no download) is run "
        "(a) through `python -m dynexport` and (b) through the raw tools. " + RAW_METHOD,
        "",
        markdown_table(rows, links=False),
        "",
        "## Failures",
        "",
        *failures(rows),
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in NOTES],
        "",
    ]
    DOC.write_text("\n".join(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="zoo script stems (default: all)")
    parser.add_argument("--work", type=Path, help="the sweep's folder (default: a temp dir)")
    parser.add_argument("--jobs", type=int, help="runs side by side (default: the sweep's)")
    parser.add_argument("--force", action="store_true",
                        help="run every script, also those unchanged since their run in --work")
    args = parser.parse_args(argv)
    scripts = scripts_in(ZOO)
    if args.models:
        scripts = [s for s in scripts if s.stem in args.models]
    work = (args.work or Path(tempfile.mkdtemp(prefix="dynexport-coverage-"))).resolve()
    os.chdir(REPO)  # rows name the scripts as examples/zoo/NAME.py
    command = [str(s.relative_to(REPO)) for s in scripts]
    if not args.models:
        command.append(str(FLAGSHIPS.relative_to(REPO)))
    command += ["--raw", "--out", str(work), "--timeout", str(TIMEOUT)]
    command += [*(["--jobs", str(args.jobs)] if args.jobs else []),
                *(["--force"] if args.force else [])]
    if sweep(command) == 2:
        return 2
    rows = json.loads((work / "sweep.json").read_text())["rows"]
    if not args.models:
        versions = installed_versions()
        versions["transformers"] = metadata.version("transformers")
        write_doc(rows, versions)
        print(f"written: {DOC.relative_to(REPO)}")
    print(f"artifacts: {work}")
    return 1 if any("VIOLATED" in " ".join(r["rule"].values()) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
