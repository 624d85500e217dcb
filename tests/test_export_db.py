"""Issue #26: every one of torch's own export examples (torch/_export/db/examples/, shipped with
torch) through the command line. Each supported one exits 0 with both runtimes verified on the
example and on a probe (of another size where a dimension is dynamic); the ones torch marks not
supported exit 1 with a hazard at the line that is the reason."""

import pytest
from helpers import REPO, read_report
from torch._export.db.case import SupportLevel
from torch._export.db.examples import all_examples

SCRIPT = REPO / "examples" / "export_db.py"
CASES = all_examples()
SUPPORTED = sorted(name for name, case in CASES.items()
                   if case.support_level == SupportLevel.SUPPORTED)
NOT_SUPPORTED = sorted(set(CASES) - set(SUPPORTED))


def _run(cli, tmp_path, name):
    out = tmp_path / name
    code, stdout, _ = cli("--out", out, SCRIPT, name)
    return code, stdout, read_report(out)


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_example_converts_and_verifies(cli, tmp_path, name):
    code, stdout, report = _run(cli, tmp_path, name)
    assert code == 0, stdout
    rows = report["verification"]
    assert {(v["runtime"], v["inputs"]) for v in rows} == {
        (runtime, inputs) for runtime in ("onnxruntime", "openvino")
        for inputs in ("example", "probe")}
    assert all(v["passed"] for v in rows)


@pytest.mark.parametrize("name", NOT_SUPPORTED)
def test_unsupported_example_names_its_reason_at_its_line(cli, tmp_path, name):
    code, _, report = _run(cli, tmp_path, name)
    assert code == 1
    example_file = CASES[name].model.__class__.__module__.rsplit(".", 1)[-1]
    at_lines = [h for h in report["hazards"] if h["severity"] == "error" and h["line"]
                and h["file"].endswith(f"{example_file}.py")]
    assert at_lines, report["hazards"]
    if name == "dynamic_shape_round":
        assert any("round" in h["code"] and "round" in h["message"] for h in at_lines)


def test_the_probe_of_a_dynamic_example_has_another_size():
    """What makes the dynamic examples' verification mean something: their probe is not of
    the example's sizes along the dynamic dimension."""
    from dynexport.script import load_script

    script = load_script(SCRIPT, ["scalar_output"])
    example, probe = script.example.tensors()[0], script.probe.tensors()[0]
    assert example.shape[0] == probe.shape[0] and example.shape[1] != probe.shape[1]


def test_input_mutation_is_handled_at_its_line(cli, tmp_path):
    code, _, report = _run(cli, tmp_path, "user_input_mutation")
    assert code == 0
    item = next(h for h in report["handled"] if "changed in place" in h["what"])
    assert item["code"].startswith("x.mul_(2)")


def test_openvino_keeps_an_input_its_frontend_drops(cli, tmp_path):
    import onnx
    import openvino as ov

    code, _, report = _run(cli, tmp_path, "dynamic_shape_constructor")
    assert code == 0
    out = tmp_path / "dynamic_shape_constructor"
    onnx_inputs = [i.name for i in onnx.load(out / "model.onnx").graph.input]
    ov_inputs = [i.get_any_name() for i in ov.Core().read_model(out / "openvino" / "model.xml")
                 .inputs]
    assert ov_inputs == onnx_inputs == ["x"]
    assert any("input `x` is not used" in h["what"] for h in report["handled"])


def test_a_number_output_is_handled_not_an_error(cli, tmp_path):
    code, _, report = _run(cli, tmp_path, "scalar_output")
    assert code == 0
    assert not [h for h in report["hazards"] if h["category"] == "non_tensor_output"]
    assert any("Python int" in h["what"] for h in report["handled"])


def test_a_higher_order_op_runs_unwatched_and_says_so(cli, tmp_path):
    code, _, report = _run(cli, tmp_path, "cond_closed_over_variable")
    assert code == 0
    assert any("without looking into its branches" in n and "cond_closed_over_variable.py" in n
               for n in report["notes"])
