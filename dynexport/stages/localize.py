"""Localize stage: where a converted model that left tolerance diverges, and why
(dynexport/localization/ does the work). Runs after verification for each (runtime, input)
whose outputs failed by value or by a data-dependent shape, and for the --precision variant;
an ONNX graph that holds a kernel known to race is reported even where its verification
agreed. A run that verified cleanly at f32 with no such kernel is not localised and its
report has no localize stage."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynexport.backends.onnx_races import RacyNode
from dynexport.conversion import Converted, Decomposed, converted_models, program_signature
from dynexport.eager import EagerRun
from dynexport.localization import (
    Divergence,
    converted_graph,
    localize_artifact,
    program_differs,
    shipped_races,
)
from dynexport.precision import PrecisionResult, variant_ir
from dynexport.stage import Request, Run, Stage
from dynexport.verify import Verification

# Variants computed in f32 arithmetic: nothing of theirs is a precision loss to localise.
_F32_ARITHMETIC = ("f32", "fp16-weights")


@dataclass
class Localized:
    entries: list[Divergence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _failed_by_value(records: list[Verification], runtime: str, kind: str) -> bool:
    """The runtime ran and an output left tolerance, by its values or by its shape (a
    data-dependent size, e.g. the count of unique keys, computed from wrong values)."""
    return any(r.runtime == runtime and r.inputs == kind and not r.passed
               and not r.runtime_failed for r in records)


def _localize(run: Run) -> Localized:
    program = run.result("decompose", Decomposed).program
    eager = run.result("eager", EagerRun)
    records = run.results.get("verify") or []
    options, signature, found = run.options, program_signature(run), Localized()
    racing = _racing(run)
    graphs: dict[str, torch.fx.GraphModule] = {}  # the graph each converter translated

    def graph(runtime: str) -> torch.fx.GraphModule:
        if runtime not in graphs:
            graphs[runtime] = converted_graph(program, runtime)
        return graphs[runtime]

    for runtime, artifact in converted_models(run):
        failed = [kind for kind in eager.inputs if _failed_by_value(records, runtime, kind)]
        if runtime == "onnxruntime" and not failed and racing:
            entry = shipped_races(graph(runtime), racing, next(iter(eager.inputs)))
            found.entries += [entry] if entry is not None else []
        for kind in failed:
            inputs = eager.inputs[kind]
            differs = program_differs(program, inputs, eager.outputs[kind])
            if differs:
                found.notes.append(
                    f"{runtime} on the {kind} input was not localised: the exported program "
                    f"itself differs from eager there ({differs}), so the converted model has "
                    "not diverged from it")
                continue
            entry = localize_artifact(program, artifact, runtime, inputs, kind,
                                      device=options.device, signature=signature,
                                      isolation=options.isolation, graph=graph(runtime))
            if entry is not None:
                found.entries.append(entry)
    variant = run.result("precision", PrecisionResult)
    if variant is not None and variant.precision not in _F32_ARITHMETIC:
        entry = localize_artifact(program, variant_ir(run, variant), "openvino",
                                  eager.inputs["example"], "example", variant.precision,
                                  options.device, variant.openvino_config, signature,
                                  options.isolation, graph("openvino"))
        if entry is not None:
            found.entries.append(entry)
    return found


def _requested(run: Run) -> Request:
    """Part of the run only where something left tolerance (a verification record failed by
    value, a reduced precision was made) or may leave it on another run (the ONNX graph holds
    a kernel that races)."""
    records = run.results.get("verify") or []
    variant = run.result("precision", PrecisionResult)
    diverged = any(_failed_by_value(records, r.runtime, r.inputs) for r in records) or (
        variant is not None and variant.precision not in _F32_ARITHMETIC)
    return Request.when(diverged or bool(_racing(run)))


def _racing(run: Run) -> list[RacyNode]:
    onnx = run.result("onnx", Converted)
    return onnx.racing if onnx is not None else []


LOCALIZE_STAGE = Stage("localize", _localize, needs=("decompose", "eager", "verify"),
                       requested=_requested)
