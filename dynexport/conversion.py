"""The decompose, onnx and openvino stages: the captured program → exported.pt2, model.onnx,
openvino/model.xml.

Conversions run in a child process (isolation.py): a converter that crashes in native code
fails its own stage, and the report and the other artifacts are kept. A conversion that fails
names the ops the backend lacks, at the user's lines (the coverage preflight, run only then:
a conversion that succeeds needs no second pass)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch.export import ExportedProgram

from dynexport import progress
from dynexport.backends.onnx import to_onnx
from dynexport.backends.onnx_races import RacyNode, racy_nodes
from dynexport.backends.openvino import save_openvino, to_openvino, unused_inputs
from dynexport.coverage import op_name, translate_backend_error, unsupported_ops
from dynexport.decompositions import decomposition_table
from dynexport.decompositions.attention_layout import kernel_dependent_attentions
from dynexport.decompositions.map_unroll import static_maps
from dynexport.decompositions.splice import DECOMPOSED_FROM
from dynexport.errors import one_line, summary
from dynexport.hazards.location import location_from_stack_trace
from dynexport.hazards.records import SourceLocation, UnsupportedOp
from dynexport.inputs import Signature
from dynexport.names import Backend, RuntimeName
from dynexport.quiet import quiet_torch
from dynexport.stage import Run, StageFailed


@dataclass
class Decomposed:
    """The program the backends convert, saved as exported.pt2."""

    program: ExportedProgram
    artifact: str | None  # None when exported.pt2 could not be written (`unsaved` says why)
    # ops dynexport's decompositions replaced, with the user's line of each
    replaced: list[tuple[str, SourceLocation | None]] = field(default_factory=list)
    unsaved: str | None = None


@dataclass
class Converted:
    backend: Backend
    artifact: str
    # program inputs the backend's converter dropped (unused) and dynexport kept in the model
    unused_inputs: list[str] = field(default_factory=list)
    # model.onnx's nodes whose onnxruntime kernel races (read where onnx is loaded already)
    racing: list[RacyNode] = field(default_factory=list)


@dataclass
class ConversionFailure:
    """Evidence a failed conversion leaves: the ops the backend lacks."""

    backend: Backend
    unsupported_ops: list[UnsupportedOp]
    notes: list[str] = field(default_factory=list)  # what the preflight could only judge partly


def converted_models(run: Run) -> list[tuple[RuntimeName, str]]:
    """(runtime, artifact) of each conversion of this run that succeeded."""
    found = []
    for backend, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        converted = run.result(backend, Converted)
        if converted is not None:
            found.append((runtime, converted.artifact))
    return found


def program_signature(run: Run) -> Signature | None:
    """The input and output names of the program both artifacts were converted from."""
    decomposed = run.result("decompose", Decomposed)
    return Signature.of(decomposed.program) if decomposed is not None else None


def replaced_ops(program: ExportedProgram,
                 decomposed: ExportedProgram) -> list[tuple[str, SourceLocation | None]]:
    """Ops of the captured `program` that dynexport rewrote in `decomposed` (what `decompose`
    made of it), at the user's lines. A table op still called from the same line in
    `decomposed`, by a node no decomposition made, was declined by its decomposition (an
    ordinary pool) and is not listed."""
    table = decomposition_table()
    kept = {(node.target, node.meta.get("stack_trace")) for node in decomposed.graph.nodes
            if node.op == "call_function" and DECOMPOSED_FROM not in node.meta}
    rewritten = set(static_maps(program)) | set(kernel_dependent_attentions(program.graph))
    return [(op_name(node.target), location_from_stack_trace(node.meta.get("stack_trace")))
            for node in program.graph.nodes
            if node.op == "call_function" and (node in rewritten or node.target in table
                                               and (node.target, node.meta.get("stack_trace"))
                                               not in kept)]


def convert(program: ExportedProgram, backend: Backend, out_dir: Path,
            static_shapes: list[tuple[int, ...]] | None = None) -> Converted:
    """Convert `program` for `backend` into `out_dir`; a failure raises StageFailed naming the
    ops the backend lacks where it can find them. `static_shapes` fixes the OpenVINO model's
    inputs to these shapes (its frontend makes every dimension dynamic otherwise)."""
    try:
        if backend == "onnx":
            progress.step("torch.onnx export")
            path = to_onnx(program, out_dir / "model.onnx")
        else:
            progress.step("OpenVINO's PyTorch frontend")
            model = to_openvino(program)
            if static_shapes is not None:
                model.reshape(dict(zip(model.inputs, static_shapes, strict=True)))
            progress.step("saving openvino/model.xml")
            return Converted(backend, str(save_openvino(model, out_dir / "openvino")),
                             unused_inputs(model))
        return Converted(backend, str(path), racing=racy_nodes(path))
    except Exception as exc:
        progress.step("naming the ops it lacks")
        try:
            with quiet_torch():
                found = (unsupported_ops(program, (backend,))
                         or translate_backend_error(exc, backend, program))
        except Exception as preflight:  # the conversion's own error is what matters
            raise StageFailed(f"{summary(exc)}\n(naming the unsupported ops failed too: "
                              f"{one_line(preflight)})") from exc
        if not found:
            raise
        notes = list(getattr(found, "notes", []))
        names = ", ".join(sorted({op.op for op in found}))
        raise StageFailed(f"{backend} cannot lower {names} (see unsupported_ops); "
                          f"{one_line(exc, 200)}",
                          ConversionFailure(backend, list(found), notes)) from exc
