"""Serving stage: the --layout repositories (serving.py writes them)."""

from __future__ import annotations

from pathlib import Path

from dynexport.conversion import Converted
from dynexport.precision import PrecisionResult, variant_ir
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG
from dynexport.serving import Served, model_name, write_ovms, write_triton
from dynexport.stage import Request, Run, Stage, StageFailed


def _serve(run: Run) -> Served:
    """The --layout repositories, from the artifacts that verification (and --precision)
    measured: OVMS gets the --precision IR and its compile config."""
    name = model_name(Path(run.script_path).stem)
    out = run.options.out_dir
    served = Served()
    for layout in run.options.layouts:
        needed = "openvino" if layout == "ovms" else "onnx"
        converted = run.result(needed, Converted)
        if converted is None:
            raise StageFailed(f"--layout {layout} needs the {needed} target (--to {needed}), "
                              "which was not converted")
        if layout == "ovms":
            precision = run.result("precision", PrecisionResult)
            xml = variant_ir(run, precision) if precision else converted.artifact
            config = precision.openvino_config if precision else DEFAULT_OPENVINO_CONFIG
            served.records.append(write_ovms(xml, out / "ovms", name, config))
        else:
            served.records.append(write_triton(converted.artifact, out / "triton", name))
    return served


SERVING_STAGE = Stage("serving", _serve,
                      requested=lambda run: Request.when(bool(run.options.layouts)))
