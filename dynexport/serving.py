"""Serving layouts (`--layout`): model repositories an existing serving engine loads as they are.

* `ovms`: an OpenVINO Model Server repository, `ovms/<name>/1/model.xml` + `.bin`, and
  `ovms/config.json` naming it with the `plugin_config` the model was measured with (f32
  pinned, or the --precision hint), so the server computes what dynexport verified.
  Start it with `ovms --config_path ovms/config.json` or
  `ovms --model_path ovms/<name> --model_name <name>`.
* `triton`: a Triton Inference Server repository for its onnxruntime backend,
  `triton/<name>/1/model.onnx` and `triton/<name>/config.pbtxt` with every input and output:
  its name, data type and dims, -1 where the dimension is dynamic (`max_batch_size: 0`, so
  the dims are the model's own, batch included).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dynexport.names import Layout

# ONNX TensorProto element types → Triton's model_config.proto DataType names.
TRITON_TYPES = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
    11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16",
}


@dataclass
class ServingRecord:
    """One repository written."""

    layout: Layout
    repository: str  # the folder to point the server at
    model: str  # the model file inside it

    COLUMNS = ("layout", "repository", "model")

    def to_json(self) -> dict:
        return {"layout": self.layout, "repository": self.repository, "model": self.model}

    def cells(self) -> tuple[str, ...]:
        return (self.layout, self.repository, self.model)


@dataclass
class Served:
    """The serving stage's result: every repository written."""

    records: list[ServingRecord] = field(default_factory=list)

    @property
    def artifact(self) -> str | None:
        return self.records[0].repository if self.records else None


def model_name(stem: str) -> str:
    """A name both servers accept (letters, digits, `_`, `-`), from the script's stem."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "model"


def write_ovms(xml: str | os.PathLike, repository: str | os.PathLike, name: str,
               plugin_config: dict[str, str] | None = None, version: int = 1) -> ServingRecord:
    """Copy the IR `xml` (+ .bin) to `repository/name/version/` and write
    `repository/config.json` (base_path relative to it, as OVMS resolves it)."""
    xml, repository = Path(xml), Path(repository)
    target = repository / name / str(version)
    _fresh(target)
    shutil.copyfile(xml, target / "model.xml")
    shutil.copyfile(xml.with_suffix(".bin"), target / "model.bin")
    config: dict = {"name": name, "base_path": name}
    if plugin_config:
        config["plugin_config"] = dict(plugin_config)
    (repository / "config.json").write_text(
        json.dumps({"model_config_list": [{"config": config}]}, indent=2) + "\n")
    return ServingRecord("ovms", str(repository), str(target / "model.xml"))


def write_triton(onnx_path: str | os.PathLike, repository: str | os.PathLike, name: str,
                 version: int = 1) -> ServingRecord:
    """Copy `onnx_path` (and its external data, if any) to `repository/name/version/model.onnx`
    and write `repository/name/config.pbtxt` from the model's own inputs and outputs."""
    import onnx

    onnx_path, repository = Path(onnx_path), Path(repository)
    target = repository / name / str(version)
    _fresh(target)
    shutil.copyfile(onnx_path, target / "model.onnx")
    data = onnx_path.with_name(onnx_path.name + ".data")  # torch.onnx's external-data file
    if data.is_file():
        shutil.copyfile(data, target / data.name)
    model = onnx.load(str(onnx_path), load_external_data=False)
    (repository / name / "config.pbtxt").write_text(triton_config(model, name))
    return ServingRecord("triton", str(repository), str(target / "model.onnx"))


def triton_config(model, name: str) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for an onnx.ModelProto."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    lines = [f"name: {json.dumps(name)}", 'backend: "onnxruntime"', "max_batch_size: 0"]
    for kind, values in (("input", inputs), ("output", model.graph.output)):
        lines.append(f"{kind} [")
        entries = []
        for value in values:
            tensor = value.type.tensor_type
            if tensor.elem_type not in TRITON_TYPES:
                raise ValueError(f"{field} {value.name!r} has ONNX element type "
                                 f"{tensor.elem_type}, which Triton has no type for")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            entry = ["  {", f"    name: {json.dumps(value.name)}",
                     f"    data_type: {TRITON_TYPES[tensor.elem_type]}",
                     f"    dims: [ {', '.join(str(d) for d in dims or [1])} ]"]
            if not dims:  # Triton has no rank-0 dims; a scalar is [1] reshaped to []
                entry.append("    reshape: { shape: [ ] }")
            entries.append("\n".join([*entry, "  }"]))
        lines.append(",\n".join(entries))
        lines.append("]")
    lines.append("instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]")
    return "\n".join(lines) + "\n"


def _fresh(folder: Path) -> None:
    """An empty version folder: files of an earlier run must not be served by mistake."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
