"""OpenVINO PyTorch-frontend internals dynexport relies on: the fx decoder and the
decomposition table it applies, partial conversion, framework nodes and conversion
extensions.

Each name here is smoke-tested in tests/test_adapters.py (`test_openvino_*`). OpenVINO's
frontend modules are imported inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.export import ExportedProgram

from dynexport.adapters.torch_export import OpOverload, custom_decomp_table

__all__ = [
    "conversion_extension",
    "convert_partially",
    "decoder",
    "decoder_graph_module",
    "decoder_input",
    "element_type",
    "framework_node_names",
    "ops_to_not_decompose",
    "quiet_openvino",
]


def ops_to_not_decompose() -> list[OpOverload]:
    """The ops OpenVINO's frontend converts itself, taken out of torch's decomposition table
    by `convert_model(ep)` (`TorchFXPythonDecoder.from_exported_program`)."""
    from openvino.frontend.pytorch.torchdynamo.export_decompositions import (
        ops_to_not_decompose as kept,
    )

    return list(kept())


def element_type(dtype: torch.dtype) -> Any:
    """The OpenVINO element type the frontend gives a torch dtype (torch.bool: boolean)."""
    from openvino.frontend.pytorch.utils import pt_to_ov_type_map

    return pt_to_ov_type_map[str(dtype)]


def decoder(gm: torch.fx.GraphModule) -> Any:
    """A `TorchFXPythonDecoder` of an already decomposed graph module, dynamic shapes on."""
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

    return TorchFXPythonDecoder(gm, dynamic_shapes=True)


def decoder_input(program: ExportedProgram, keep: Iterable[OpOverload] = ()) -> Any:
    """What `openvino.convert_model(program)` builds from `program`, except that the ops in
    `keep` are not decomposed (so their `ConversionExtension`s see them): torch's default
    table minus `ops_to_not_decompose()` minus `keep`, then the decoder (torch >= 2.6)."""
    table = custom_decomp_table()
    for op in [*ops_to_not_decompose(), *keep]:
        table.pop(op, None)
    return decoder(program.run_decompositions(table).module())


def decoder_graph_module(decoder_: Any) -> torch.fx.GraphModule:
    """The fx graph module a decoder converts (its `fx_gm`)."""
    return decoder_.fx_gm


def conversion_extension(op_name: str, convert: Callable[[Any], list]) -> Any:
    """A `ConversionExtension` for the fx target spelled `op_name` ("ns.name.overload")."""
    from openvino.frontend.pytorch import ConversionExtension

    return ConversionExtension(op_name, convert)


def convert_partially(decoder_: Any, extensions: Iterable[Any] = ()) -> Any:
    """The `openvino.Model` the PyTorch frontend makes of `decoder_`, with every node it
    cannot convert left in as a framework node instead of failing."""
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("pytorch")
    for extension in extensions:
        frontend.add_extension(extension)
    return frontend.convert_partially(frontend.load(decoder_))


def fx_node_of_layer(layer_name: str) -> str:
    """The fx node an OpenVINO layer was made from: the frontend names the layers of a node
    "<fx node>/<aten op>/<op>"."""
    return layer_name.split("/", 1)[0]


def fx_node_of_tensor(tensor_name: str) -> str | None:
    """The fx node whose value an OpenVINO tensor holds: the frontend names a node's result
    "<fx node>:0". None for other names."""
    return tensor_name.removesuffix(":0") if tensor_name.endswith(":0") else None


def framework_node_names(model: Any) -> list[str]:
    """The fx node names of the framework nodes (unconverted ops) of a partially converted
    model."""
    return [fx_node_of_layer(op.get_friendly_name()) for op in model.get_ordered_ops()
            if "FrameworkNode" in op.get_type_name()]


class _DropOpenVINOWarnings(logging.Filter):
    # OpenVINO logs a traceback on the root logger for each op missing from torch's table.
    def filter(self, record: logging.LogRecord) -> bool:
        return "openvino" not in record.pathname


@contextmanager
def quiet_openvino() -> Iterator[None]:
    """Drop the records OpenVINO's Python frontend logs on the root logger in the block."""
    root = logging.getLogger()
    quiet = _DropOpenVINOWarnings()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
