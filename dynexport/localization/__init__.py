"""Localisation: when a converted model disagrees with the program it was converted from, the
op responsible, at the user's line, with its cause told apart from evidence (contract §7).

The program's own FX node values on the failing input are the reference (values.py); the
converted model's values of the same nodes are read out of the runtime and compared node by
node; blame.py names the responsible ops. The cause:

* `nondeterminism`: onnxruntime's node values at one intra-op thread and at several differ
  from each other: the first node that differs, with its inputs equal, is the culprit.
* `lowering`: f32, the runtime agrees with itself, and a node's value leaves tolerance while
  its inputs are within it: that node's translation (the exporter's, dynexport's, the user's).
* `precision`: a bf16/f16/int8 variant: the nodes ranked by the error each adds by itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from dynexport import progress
from dynexport.backends.onnx_races import RacyNode, racy_nodes
from dynexport.compare import Differences
from dynexport.errors import one_line
from dynexport.inputs import Inputs, Signature, flatten_outputs
from dynexport.isolation import IN_PROCESS, ISOLATED, Isolation, run_isolated
from dynexport.localization.blame import (
    added_error,
    culprit,
    first_divergence,
    first_self_difference,
)
from dynexport.localization.records import Culprit, Divergence, Localization
from dynexport.localization.values import (
    NodeDiff,
    NodeReader,
    Setting,
    chunks,
    compare_values,
    converted_graph,
    onnx_reader,
    openvino_reader,
    output_nodes,
    program_values,
)
from dynexport.runtimes import race_threads
from dynexport.verify import RACING_KERNEL_REPEATS, Comparison

__all__ = ["Culprit", "Divergence", "Localization", "converted_graph", "localize",
           "localize_artifact", "program_differs", "shipped_races"]


def program_differs(program: ExportedProgram, inputs: Inputs,
                    expected: list[tuple[str, Any]]) -> str | None:
    """How the program's own outputs on `inputs` leave eager's `expected`, or None where they
    are within tolerance. Where the program itself differs (a value of the example frozen into
    the graph), a converted model that differs has not diverged from the program."""
    try:
        with torch.no_grad():
            outputs = flatten_outputs(program.module()(*inputs.args, **inputs.kwargs))
    except Exception as exc:  # e.g. a runtime assertion the capture put in for the example
        return f"the program raises on them ({one_line(exc, 200)})"
    if len(outputs) != len(expected):
        return f"the program returns {len(outputs)} outputs, eager {len(expected)}"
    differing = [name for (name, reference), (_, actual) in zip(expected, outputs, strict=True)
                 if isinstance(reference, torch.Tensor)
                 and not Comparison.of(reference, actual).passed]
    return f"the program's {', '.join(differing)} differ from eager's" if differing else None


def localize_artifact(program: ExportedProgram, artifact: str | os.PathLike, runtime: str,
                      inputs: Inputs, inputs_name: str, precision: str = "f32",
                      device: str = "CPU", config: dict | None = None,
                      signature: Signature | None = None,
                      isolation: Isolation = ISOLATED,
                      graph: torch.fx.GraphModule | None = None) -> Divergence | None:
    """Localise where `artifact` (a model converted from `program`, run by `runtime` with
    OpenVINO compile `config`) leaves the program's values on `inputs`; None when every
    compared node is within tolerance and the runtime agrees with itself. `graph`: the
    runtime's `converted_graph(program, runtime)`, where the caller has it already."""
    start = time.perf_counter()
    progress.step(f"localising {runtime} {precision} on the {inputs_name} input")
    graph = converted_graph(program, runtime) if graph is None else graph
    reference = program_values(graph, program, inputs)
    signature = signature or Signature.of(program)
    renamed = output_nodes(graph, signature)

    def compared() -> tuple[dict[str, NodeDiff], dict[str, NodeDiff], int, dict[str, str],
                            list[str]]:
        path = Path(artifact)
        if runtime == "onnxruntime":
            import onnx_ir as ir

            model = ir.load(path)
            names, read = onnx_reader(model, inputs, signature, renamed)
            # 1 thread is the runtime's own reference; several, repeated, show a race
            settings = [(1, 1), (race_threads(), RACING_KERNEL_REPEATS)]
            lowerings = _lowerings(model, renamed)
            racing = [r.fx_node for r in racy_nodes(path)]
        else:
            names, read = openvino_reader(path, inputs, signature, renamed, device, config)
            settings, lowerings, racing = [(None, 1)], {}, []
        order = [n for n in reference if n in set(names)]
        return (*_diffs(reference, order, read, settings), len(order), lowerings, racing)

    diffs, self_diffs, count, lowerings, racing = run_isolated(
        compared, f"localising {runtime} on {Path(artifact).name}", isolation)
    if all(d.passed for d in diffs.values()) and all(d.passed for d in self_diffs.values()):
        if not racing:
            return None
        entry = _known_races(graph.graph, racing, lowerings, "the node values agreed this run "
                             f"at 1 thread and in {RACING_KERNEL_REPEATS} runs at "
                             f"{race_threads()} threads")
    else:
        entry = _judge(graph.graph, precision, diffs, self_diffs, runtime, lowerings, racing)
    entry.inputs, entry.seconds = inputs_name, time.perf_counter() - start
    entry.compared, entry.nodes = count, len(reference)
    entry.measured = (f"{count} of the {len(reference)} node values of the graph {runtime}'s "
                      "converter translated compared"
                      + (f"; {entry.measured}" if entry.measured else ""))
    return entry


def _diffs(reference: dict, order: list[str], read: NodeReader, settings: list[Setting]
           ) -> tuple[dict[str, NodeDiff], dict[str, NodeDiff]]:
    """Each node against the reference, from the first setting's run; and each node of the
    other settings' runs against that run's."""
    diffs, self_diffs = {}, {}
    for chunk in chunks(order, reference):
        [[one], *others] = read(chunk, settings)
        diffs.update(compare_values(reference, one))
        runs = [run for other in others for run in other]
        if not runs:
            continue
        for name in chunk:
            worst = max((Differences.of(one[name], run[name]) for run in runs
                         if run[name].shape == one[name].shape),
                        key=lambda found: found.max_abs, default=None)
            if worst is not None:
                self_diffs[name] = NodeDiff(name, worst.max_abs, worst.max_rel,
                                            worst.max_abs == 0)
    return diffs, self_diffs


def _lowerings(model: Any, renamed: dict[str, str]) -> dict[str, str]:
    """The op of the ONNX model (an onnx_ir.Model) that computes each FX node's value (e.g.
    "ScatterND(reduction=add)"), for the fix text."""
    nodes = {name: node for node, name in renamed.items()}
    found = {}
    for node in model.graph:
        reduction = node.attributes.get("reduction")
        kind = node.op_type + (f"(reduction={reduction.as_string()})" if reduction else "")
        for value in node.outputs:
            found[nodes.get(value.name, value.name)] = kind
    return found


def _judge(graph: torch.fx.Graph, precision: str, diffs: dict[str, NodeDiff],
           self_diffs: dict[str, NodeDiff], runtime: str,
           lowerings: dict[str, str], racing_nodes: list[str]) -> Divergence:
    if precision != "f32":
        culprits = added_error(graph, diffs, runtime)
        return Divergence(runtime, precision, "", "precision", culprits, _precision_fix(culprits))
    compared_runs = (f"node values at 1 thread and in {RACING_KERNEL_REPEATS} runs at "
                     f"{race_threads()} threads compared")
    racing = first_self_difference(graph, self_diffs, runtime)
    if racing is not None:
        return Divergence(runtime, precision, "", "nondeterminism", [racing],
                          _race_fix(racing, lowerings), measured=compared_runs)
    first = first_divergence(graph, diffs, runtime)
    if first is not None and first.node in racing_nodes:
        return Divergence(runtime, precision, "", "nondeterminism", [first],
                          _race_fix(first, lowerings), measured=(
                              f"{compared_runs}: they agreed this time, but this node's kernel "
                              "is one that races (dynexport/backends/onnx_races.py), and it is "
                              "the first node off with its inputs right"))
    measured = "the runtime agreed with itself at 1 and several threads" \
        if runtime == "onnxruntime" else ""
    return Divergence(runtime, precision, "", "lowering", [first] if first else [],
                      _lowering_fix(first, runtime, lowerings), measured=measured)


def _race_fix(culprit: Culprit, lowerings: dict[str, str]) -> str:
    lowering = lowerings.get(culprit.node)
    how = f" lowered to {lowering}" if lowering else ""
    whose = "your translation of " if culprit.translation == "user" else ""
    return (f"onnxruntime computes {whose}{culprit.op}{how} with a kernel that races on "
            "repeated indices with several intra-op threads (onnxruntime #18048, #23396): "
            "compute it with one that does not (for a sum into repeated indices, "
            "ScatterElements, or index_add / index_put(accumulate=True), which dynexport lowers "
            "exactly), or run the session with intra_op_num_threads=1.")


def shipped_races(graph: torch.fx.GraphModule, racing: list[RacyNode],
                  inputs_name: str) -> Divergence | None:
    """A `nondeterminism` entry for a model.onnx whose graph holds `racing`, nodes with a
    kernel known to race (`graph`: onnxruntime's `converted_graph`), though its verification
    agreed: a race need not show in a given run
    (a busy machine overlaps fewer threads). None without such nodes."""
    if not racing:
        return None
    lowerings = {r.fx_node: f"{r.op_type}(reduction={r.reduction})" for r in racing}
    entry = _known_races(graph.graph, [r.fx_node for r in racing], lowerings,
                         "verification agreed at 1 and several threads this run")
    entry.inputs = inputs_name
    return entry


def _known_races(graph: torch.fx.Graph, racing: list[str], lowerings: dict[str, str],
                 measured: str) -> Divergence:
    """`nondeterminism` at the nodes whose kernel is known to race, where the race did not
    show in the runs made."""
    culprits = [culprit(node, NodeDiff(node.name, 0.0, 0.0, True), [], "onnxruntime")
                for node in graph.nodes if node.name in racing]
    return Divergence(
        "onnxruntime", "f32", "", "nondeterminism", culprits,
        _race_fix(culprits[0], lowerings) if culprits else _RACE_FIX_UNPLACED,
        measured=f"{measured}; the graph holds {len(racing)} node(s) with a kernel that races "
                 "(dynexport/backends/onnx_races.py), so another run may not")


# A racing kernel whose FX node the converter's graph does not name (e.g. inside a function).
_RACE_FIX_UNPLACED = ("onnxruntime computes a node of this model with a kernel that races on "
                      "repeated indices with several intra-op threads: run the session with "
                      "intra_op_num_threads=1, or lower the scatter another way.")


def _lowering_fix(culprit: Culprit | None, runtime: str, lowerings: dict[str, str]) -> str:
    if culprit is None:
        return ("No compared node leaves tolerance: the difference arises in values the "
                "converter renamed or fused; compare the outputs' producers by hand.")
    lowering = lowerings.get(culprit.node)
    how = f" (lowered to {lowering})" if lowering else ""
    if culprit.narrowed_to_int32:
        return (f"torch's int64 values of {culprit.op} exceed int32's range (2,147,483,647) "
                f"here and {runtime}'s all lie within it: the runtime computed the node in 32 "
                "bits (OpenVINO's CPU plugin executes int64 as int32). Keep the integers "
                "within int32: build a key from smaller strides (the cells that occur, not "
                "the whole grid), or keep its parts in separate tensors.")
    if culprit.from_floats:
        return (f"{culprit.op} turns floating-point values into integers, and in {runtime} "
                f"those values differ from torch's by up to {culprit.input_max_abs_diff:.3g}, "
                "within tolerance but enough to cross an integer boundary: compute the index "
                "from integers, or keep its inputs away from the boundaries (e.g. divide by an "
                "exactly representable step).")
    if culprit.translation == "user":
        return (f"Your translation of {culprit.op}{how}, {culprit.translated_by}, computes "
                f"something else than the op's kernel from the same inputs in {runtime}: fix "
                "it against the kernel.")
    if culprit.translation == "dynexport":
        return (f"dynexport's lowering of {culprit.op}{how} is wrong in {runtime} on these "
                "inputs: please report it with report.json.")
    return (f"{runtime}'s conversion of {culprit.op}{how} differs from torch on these inputs: "
            "write the line with other ops, or register a translation for it "
            "(dynexport.custom_ops.registry).")


def _precision_fix(culprits: Sequence[Culprit]) -> str:
    """--keep-f32 of the culprits' lines, each with the lines computing its inputs."""
    lines = list(dict.fromkeys(line for c in culprits if c.location
                               for line in [*c.input_lines, c.where]))
    if not lines:
        return "No compared op adds error by itself beyond f32's tolerance."
    return f"Keep these lines in f32: --keep-f32 {','.join(lines)}"


def localize(program: ExportedProgram, artifact: str | os.PathLike, args: tuple = (),
             kwargs: dict | None = None, runtime: str | None = None, precision: str = "f32",
             device: str = "CPU", config: dict | None = None) -> Localization:
    """Where `artifact` (model.onnx or an OpenVINO model.xml converted from `program`) leaves
    the program's values on `args`/`kwargs`; a table in Jupyter. The runtime is told by the
    file's suffix unless given. OpenVINO compiles with `config`; without one, with the
    `precision` hint for bf16 and f16, else at f32.
    Runs in this process: a notebook that already ran OpenVINO has its thread pool, which a
    forked child would inherit mid-state and hang on."""
    runtime = runtime or ("onnxruntime" if str(artifact).endswith(".onnx") else "openvino")
    inputs = Inputs(tuple(args), dict(kwargs or {}))
    if config is None and precision in ("bf16", "f16"):
        config = {"INFERENCE_PRECISION_HINT": precision}
    entry = localize_artifact(program, artifact, runtime, inputs, "given", precision, device,
                              config, isolation=IN_PROCESS)
    return Localization([entry] if entry else [])

