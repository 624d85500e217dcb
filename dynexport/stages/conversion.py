"""The decompose, onnx and openvino stages: the captured program → exported.pt2, model.onnx,
openvino/model.xml (conversion.py converts; each conversion in a child process)."""

from __future__ import annotations

import torch

from dynexport import progress
from dynexport.capture import Capture
from dynexport.conversion import Decomposed, convert, replaced_ops
from dynexport.decompositions import decompose
from dynexport.errors import one_line
from dynexport.isolation import start_isolated
from dynexport.names import Backend
from dynexport.quiet import quiet_torch
from dynexport.script import Script
from dynexport.stage import Request, Run, Stage, Started


def _decompose(run: Run) -> Decomposed:
    captured = run.result("capture", Capture)
    with quiet_torch():
        progress.step("decompositions")
        program = decompose(captured.program)
        progress.step("saving exported.pt2")
        path = run.options.out_dir / "exported.pt2"
        try:
            torch.export.save(program, path)
        except Exception as exc:  # the conversions need the program, not the file
            path.unlink(missing_ok=True)
            return Decomposed(program, None, replaced_ops(captured.program, program),
                              unsaved=one_line(exc, 300))
    return Decomposed(program, str(path), replaced_ops(captured.program, program))


def _conversion_stage(backend: Backend) -> Stage:
    def start_stage(run: Run) -> Started:
        program = run.result("decompose", Decomposed).program
        static = [tuple(t.shape) for t in run.result("load", Script).example.tensors()] \
            if run.options.static else None
        return start_isolated(lambda: convert(program, backend, run.options.out_dir, static),
                              f"the {backend} conversion", run.options.isolation, backend)

    return Stage(backend, lambda run: start_stage(run).result(), needs=("decompose",),
                 requested=lambda run: Request.when(backend in run.options.targets),
                 start=start_stage)


DECOMPOSE_STAGE = Stage("decompose", _decompose, needs=("capture",))
ONNX_STAGE = _conversion_stage("onnx")
OPENVINO_STAGE = _conversion_stage("openvino")
