"""--layout ovms / triton: the repositories are well formed. OVMS: the version folder's IR
loads with openvino and config.json names it; Triton: config.pbtxt, read by a strict parser of
the protobuf text format, matches the ONNX model's inputs and outputs."""

import json
import re
from pathlib import Path

import onnx
import openvino as ov
import pytest
from helpers import read_report
from test_precision import SCRIPT

from dynexport.serving import TRITON_TYPES, model_name


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One CLI run writing both layouts for a model with a dynamic batch, a float and an
    integer output."""
    from dynexport.__main__ import main

    root = tmp_path_factory.mktemp("served")
    script = root / "net.py"
    script.write_text(SCRIPT)
    out = root / "out"
    assert main(["--out", str(out), "--layout", "ovms,triton", str(script)]) == 0
    return out, read_report(out)


def test_report_lists_both_repositories(served):
    out, report = served
    assert [(s["layout"], s["repository"]) for s in report["serving"]] == [
        ("ovms", str(out / "ovms")), ("triton", str(out / "triton"))]
    stage = next(s for s in report["stages"] if s["name"] == "serving")
    assert stage["status"] == "ok"


def test_ovms_repository_loads_with_openvino(served):
    out, report = served
    repository = out / "ovms"
    config = json.loads((repository / "config.json").read_text())
    [entry] = config["model_config_list"]
    name = entry["config"]["name"]
    assert name == "net" and entry["config"]["plugin_config"] == {
        "INFERENCE_PRECISION_HINT": "f32"}  # what verification measured
    version = repository / entry["config"]["base_path"] / "1"  # relative to config.json
    assert sorted(p.name for p in version.iterdir()) == ["model.bin", "model.xml"]
    model = ov.Core().read_model(version / "model.xml")
    original = ov.Core().read_model(out / "openvino" / "model.xml")
    assert [i.get_any_name() for i in model.inputs] == [i.get_any_name()
                                                          for i in original.inputs]
    assert len(model.outputs) == 2
    ov.Core().compile_model(model, "CPU")


def test_triton_config_matches_the_onnx_model(served):
    out, _ = served
    folder = out / "triton" / "net"
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert config["name"] == ["net"] and config["backend"] == ["onnxruntime"]
    assert config["max_batch_size"] == [0]
    assert config["instance_group"][0]["kind"] == ["KIND_CPU"]
    model = onnx.load(str(folder / "1" / "model.onnx"))
    onnx.checker.check_model(model)
    for field, values in (("input", model.graph.input), ("output", model.graph.output)):
        expected = [(v.name, TRITON_TYPES[v.type.tensor_type.elem_type],
                     [d.dim_value if d.HasField("dim_value") else -1
                      for d in v.type.tensor_type.shape.dim]) for v in values]
        declared = [(e["name"][0], e["data_type"][0], e["dims"]) for e in config[field]]
        assert declared == expected
    inputs = {e["name"][0]: e for e in config["input"]}
    assert inputs["images"]["dims"] == [-1, 3, 32, 32]  # the dynamic batch
    types = {e["data_type"][0] for e in config["output"]}
    assert types == {"TYPE_FP32", "TYPE_INT64"}  # logits and labels


def test_unknown_layout_is_a_usage_error(cli, tmp_path):
    code, _, err = cli("--out", tmp_path, "--layout", "torchserve", "model.py")
    assert code == 2 and "--layout" in err


def test_layout_needs_its_target(cli, tmp_path):
    script = tmp_path / "net.py"
    script.write_text(SCRIPT)
    code, _, _ = cli("--out", tmp_path / "out", "--to", "onnx", "--no-verify",
                     "--layout", "ovms", script)
    assert code == 1
    report = read_report(tmp_path / "out")
    stage = next(s for s in report["stages"] if s["name"] == "serving")
    assert stage["status"] == "failed" and "--to openvino" in stage["error"]


def test_model_name_is_safe_for_both_servers():
    assert model_name("flashocc") == "flashocc" and model_name("my model.v2") == "my_model_v2"


# --- a strict reader of the protobuf text format subset config.pbtxt uses ----------------------

_TOKEN = re.compile(r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<number>-?\d+(?:\.\d+)?)'
                    r'|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[:{}\[\],]))')


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"unexpected text at {position}: {text[position:position + 20]!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def parse_pbtxt(text: str) -> dict:
    """{field: [values]} (repeated fields are lists; messages are dicts); raises ValueError on
    anything outside the grammar: `name: scalar`, `name { ... }`, `name [ a, b ]`,
    `name: [ ... ]`."""
    tokens = _tokens(text)
    message, end = _message(tokens, 0)
    if end != len(tokens):
        raise ValueError(f"trailing tokens: {tokens[end:]}")
    return message


def _message(tokens, i):
    fields: dict = {}
    while i < len(tokens) and tokens[i] != ("punct", "}"):
        kind, name = tokens[i]
        if kind != "name":
            raise ValueError(f"expected a field name, got {tokens[i]}")
        i += 1
        colon = tokens[i] == ("punct", ":")
        i += colon
        if not colon and tokens[i] not in (("punct", "{"), ("punct", "[")):
            raise ValueError(f"{name}: a scalar needs a colon")
        if tokens[i] == ("punct", "["):
            values, i = _list(tokens, i + 1)
            fields.setdefault(name, []).extend(values)
        else:
            value, i = _value(tokens, i)
            fields.setdefault(name, []).append(value)
    return fields, i


def _list(tokens, i):
    values = []
    while tokens[i] != ("punct", "]"):
        value, i = _value(tokens, i)
        values.append(value)
        if tokens[i] == ("punct", ","):
            i += 1
        elif tokens[i] != ("punct", "]"):
            raise ValueError(f"expected , or ], got {tokens[i]}")
    return values, i + 1


def _value(tokens, i):
    kind, text = tokens[i]
    if (kind, text) == ("punct", "{"):
        message, i = _message(tokens, i + 1)
        if tokens[i] != ("punct", "}"):
            raise ValueError("unclosed message")
        return message, i + 1
    if kind == "string":
        return json.loads(text), i + 1
    if kind == "number":
        return (float(text) if "." in text else int(text)), i + 1
    if kind == "name":  # an enum value
        return text, i + 1
    raise ValueError(f"expected a value, got {tokens[i]}")


def test_the_parser_is_strict():
    assert parse_pbtxt('a: 1 b { c: "x" } d [ 1, -1 ]') == {"a": [1], "b": [{"c": ["x"]}],
                                                           "d": [1, -1]}
    for bad in ("a: ", "a { b: 1", "a [ 1 2 ]", "a: 1 }", "a = 1", "a 1"):
        with pytest.raises((ValueError, IndexError)):
            parse_pbtxt(bad)


def test_scalar_outputs_are_reshaped(tmp_path: Path):
    from onnx import TensorProto, helper

    from dynexport.serving import triton_config

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])])
    config = parse_pbtxt(triton_config(helper.make_model(graph), "sum"))
    assert config["input"][0]["dims"] == [-1]
    assert config["output"][0]["dims"] == [1]
    assert config["output"][0]["reshape"] == [{"shape": []}]
