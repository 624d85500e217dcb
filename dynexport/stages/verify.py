"""Verify stage: every converted model against eager PyTorch (verify.py)."""

from __future__ import annotations

from pathlib import Path

from dynexport.conversion import Converted, converted_models, program_signature
from dynexport.eager import EagerRun
from dynexport.names import BACKENDS
from dynexport.script import Script, ScriptError
from dynexport.stage import Request, Run, Stage
from dynexport.verify import Verification, verify_artifact


def _verify(run: Run) -> list[Verification]:
    eager, script = run.result("eager", EagerRun), run.result("load", Script)
    tolerances = script.tolerances
    unknown = sorted(set(tolerances) - set(eager.output_names()))
    if unknown:
        raise ScriptError(
            f"`tolerances` in {script.path} names {', '.join(map(repr, unknown))}, which the "
            f"model does not return (its outputs: {', '.join(eager.output_names())}). Use the "
            "output names of the report's verification table.")
    onnx = run.result("onnx", Converted)
    racing = bool(onnx and onnx.racing)
    return [record for runtime, artifact in converted_models(run)
            for record in verify_artifact(runtime, Path(artifact), run.options.device,
                                          eager.outputs, eager.inputs, run.options.isolation,
                                          tolerances, program_signature(run),
                                          racing=racing and runtime == "onnxruntime")]


def _requested(run: Run) -> Request:
    return Request.skipped_unless("--no-verify" if not run.options.verify
                                  else run.options.device_missing)


VERIFY_STAGE = Stage("verify", _verify, needs=("eager",), needs_any=BACKENDS,
                     requested=_requested)
