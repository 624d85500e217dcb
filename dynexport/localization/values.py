"""The values of a program's FX nodes: the program's own (torch, the reference) and a converted
model's (the same nodes read out of onnxruntime or OpenVINO), compared node by node.

Both converters name what they make after the FX nodes: torch.onnx names a node's ONNX value
after it (`linear`), OpenVINO's PyTorch frontend names the output tensor `<node>:0`; the
model's outputs carry the program's output names instead (`renamed`). A node whose
value the converter renamed or fused away has no counterpart and is not compared; the caller is
told how many were. Each read adds the node values as extra model outputs, in chunks that keep
the added outputs' memory bounded, and compares them in the process that ran the model, so only
the numbers travel back."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.fx._pytree import tree_flatten_spec
from torch.utils import _pytree as pytree

from dynexport.adapters import openvino_frontend
from dynexport.adapters.openvino_frontend import decoder_graph_module
from dynexport.adapters.torch_onnx import onnx_registry, prepare_for_export
from dynexport.custom_ops.registry import default_registry
from dynexport.inputs import Inputs, Signature
from dynexport.precision.explicit import f32_results
from dynexport.quiet import quiet_torch
from dynexport.runtimes import (
    DEFAULT_OPENVINO_CONFIG,
    OnnxRuntimeRunner,
    OpenVINORunner,
    to_numpy,
)
from dynexport.verify import Comparison


def chunk_bytes() -> int:
    """Added outputs per model run, in bytes of the reference's values: a quarter of the memory
    available now (the reference, the runtime's copies and its own buffers must fit), at least
    256 MiB. Each chunk compiles the model once, which is most of localisation's time."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(256 << 20, available // 4)


@dataclass(frozen=True)
class NodeDiff:
    """One FX node's value in a converted model against the reference's."""

    node: str
    max_abs: float
    max_rel: float  # max_abs relative to the reference's largest magnitude
    passed: bool  # within verification's tolerance for its dtype
    integer: bool = False  # indices, labels, masks: computed exactly from their inputs
    # torch's int64 values exceed int32's range and the runtime's all lie within it: the
    # runtime computed the node in 32 bits (OpenVINO's CPU plugin executes int64 as int32)
    narrowed_to_int32: bool = False


def converted_graph(program: ExportedProgram, runtime: str) -> torch.fx.GraphModule:
    """The graph the runtime's converter really translated from `program`: each converter
    decomposes the program once more with its own table (and names its nodes anew), so these
    are the nodes whose names the converted model carries."""
    registry = default_registry()
    if runtime == "onnxruntime":
        translations = onnx_registry(registry.onnx_translation_table().items())
        with quiet_torch():
            return prepare_for_export(program, translations).module()
    return decoder_graph_module(registry.openvino_decoder_input(program))


def program_values(module: torch.fx.GraphModule, program: ExportedProgram,
                   inputs: Inputs) -> dict[str, torch.Tensor]:
    """Every tensor-valued call_function node of `module` (`program` or a converter's
    decomposition of it, called like it) on `inputs`, by node name."""
    flat = tree_flatten_spec((inputs.args, inputs.kwargs), program.call_spec.in_spec)
    values: dict[str, torch.Tensor] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> Any:
            result = super().run_node(node)
            if node.op == "call_function" and isinstance(result, torch.Tensor):
                values[node.name] = result.detach()
            return result

    with torch.no_grad():
        Recorder(module).run(*flat)
    return values


def chunks(names: Sequence[str], reference: dict[str, torch.Tensor],
           limit: int | None = None) -> Iterator[list[str]]:
    """`names` in graph order, cut where the added outputs would pass `limit` bytes."""
    limit = chunk_bytes() if limit is None else limit
    chunk, size = [], 0
    for name in names:
        nbytes = reference[name].numel() * reference[name].element_size()
        if chunk and size + nbytes > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(name)
        size += nbytes
    if chunk:
        yield chunk


def compare_values(reference: dict[str, torch.Tensor], actual: dict[str, np.ndarray]
                   ) -> dict[str, NodeDiff]:
    """Each node present on both sides with the same shape: floats judged as verification
    judges an output of their dtype, integers exactly (an index that moves by one element
    moves a whole value, however few of them move: verification's label share would hide it)."""
    found = {}
    for name, value in actual.items():
        expected = reference[name].numpy()
        if expected.shape != value.shape:
            continue  # e.g. a layout the converter chose; not comparable element by element
        comparison = Comparison.of(expected, value)
        integer = expected.dtype.kind in "biu"
        exact = comparison.max_abs_diff == 0
        found[name] = NodeDiff(name, comparison.max_abs_diff, comparison.max_rel_diff,
                               exact if integer else comparison.passed, integer,
                               not exact and _narrowed_to_int32(expected, value))
    return found


_INT32 = np.iinfo(np.int32)


def _narrowed_to_int32(expected: np.ndarray, actual: np.ndarray) -> bool:
    """Whether torch's int64 values leave int32's range while the runtime's all stay in it
    (wrapped or saturated: OpenVINO wraps inputs and clamps constants)."""
    def fits(values: np.ndarray) -> bool:
        return values.size == 0 or (values.min() >= _INT32.min and values.max() <= _INT32.max)

    return expected.dtype == np.int64 and actual.dtype == np.int64 \
        and not fits(expected) and fits(actual)


# --- reading node values out of a converted model --------------------------------------------

# How a reader runs the model: (intra-op threads, None for the runtime's own setting; runs)
Setting = tuple[int | None, int]
# (FX node names, settings) → per setting, each run's values of those nodes
NodeReader = Callable[[list[str], Sequence[Setting]], list[list[dict[str, np.ndarray]]]]


def output_nodes(module: torch.fx.GraphModule, signature: Signature) -> dict[str, str]:
    """FX node → the output name both artifacts give its value, where that differs."""
    output = next(n for n in module.graph.nodes if n.op == "output")
    nodes = [n.name if isinstance(n, torch.fx.Node) else None
             for n in pytree.tree_leaves(output.args[0])]
    if signature.outputs is None or len(nodes) != len(signature.outputs):
        return {}
    return {node: name for node, name in zip(nodes, signature.outputs, strict=True)
            if node is not None and node != name}


def onnx_reader(model: Any, inputs: Inputs, signature: Signature,
                renamed: dict[str, str]) -> tuple[list[str], NodeReader]:
    """The FX node names the ONNX model (an onnx_ir.Model) has values for, and a function that
    saves it once per chunk with those values added as outputs and runs it on `inputs` in each
    setting, with the sessions verification uses for checking runs (idle threads sleeping)."""
    import onnx_ir as ir

    by_name = {value.name: value for node in model.graph for value in node.outputs}
    names = {name: name for name in by_name}  # FX node → its value's name in the model
    names.update({node: name for node, name in renamed.items() if name in by_name})
    outputs = {value.name for value in model.graph.outputs}
    feeds = to_numpy(inputs.tensors())

    def read(wanted: list[str], settings: Sequence[Setting]) -> list[list[dict[str, np.ndarray]]]:
        added = [names[n] for n in wanted if names[n] not in outputs]
        model.graph.outputs.extend(by_name[n] for n in added)
        fetched = [names[n] for n in wanted]
        try:
            with tempfile.TemporaryDirectory() as folder:
                marked = Path(folder) / "marked.onnx"
                ir.save(model, marked, external_data="marked.onnx.data")
                found = []
                for threads, runs in settings:
                    runner = OnnxRuntimeRunner(marked, threads or 1, signature, spin=False,
                                               arena=False)
                    found.append([dict(zip(wanted, runner.session.run(
                        fetched, runner.names.feeds(feeds)), strict=True))
                        for _ in range(runs)])
                    del runner  # one session open at a time
                return found
        finally:
            del model.graph.outputs[len(model.graph.outputs) - len(added):]

    return list(names), read


def openvino_reader(path: Path, inputs: Inputs, signature: Signature, renamed: dict[str, str],
                    device: str, config: dict | None) -> tuple[list[str], NodeReader]:
    """The FX node names the OpenVINO IR at `path` has output tensors for (`<node>:0`), and a
    function that compiles it with those tensors added as outputs and runs it on `inputs`."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    by_name = {}  # a tensor's FX node → one of its names (any names the port, for add_outputs)
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Constant", "Result"):
            continue
        for port in op.outputs():
            for name in port.get_names():
                by_name.setdefault(openvino_frontend.fx_node_of_tensor(name) or name, name)
    tensors = dict(by_name)  # FX node → the name of the tensor that holds its value
    tensors.update({node: by_name[name] for node, name in renamed.items() if name in by_name})
    feeds = to_numpy(inputs.tensors())

    def read(names: list[str], settings: Sequence[Setting]) -> list[list[dict[str, np.ndarray]]]:
        marked = model.clone()
        marked.add_outputs([tensors[n] for n in names])  # an output already is one stays one
        f32_results(marked)  # a bf16 IR's values would come back as misread float16
        found = []
        for threads, runs in settings:
            settled = dict(DEFAULT_OPENVINO_CONFIG if config is None else config)
            if threads is not None:
                settled["INFERENCE_NUM_THREADS"] = threads
            runner = OpenVINORunner(marked, device, settled, signature)
            outputs = {n: runner.compiled.output(tensors[n]) for n in names}
            found.append([])
            for _ in range(runs):
                results = runner.request.infer(runner.names.feeds(feeds), share_inputs=False)
                found[-1].append({n: np.array(results[port]) for n, port in outputs.items()})
        return found

    return list(tensors), read
