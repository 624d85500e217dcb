import numpy as np
import pytest
import torch
from helpers import read_report

from dynexport.inputs import Inputs, flatten_outputs
from dynexport.tolerance import Tolerance, parse_tolerances
from dynexport.verify import compare, verify


def _expected(eager, inputs):
    """Eager's outputs per input, as the eager stage records them."""
    return {kind: flatten_outputs(eager(values)) for kind, values in inputs.items()}


def test_float32_within_tolerance_passes_and_reports_differences():
    ref = np.linspace(-10, 10, 101, dtype=np.float32)
    result = compare(ref, ref + 1e-5)
    assert result.passed and result.label_agreement is None
    assert result.max_abs_diff == pytest.approx(1e-5, rel=1e-2)
    assert result.max_rel_diff == pytest.approx(1e-6, rel=1e-2)


def test_float32_beyond_tolerance_fails():
    ref = np.ones(10, dtype=np.float32)
    assert not compare(ref, ref + 0.01).passed


def test_shape_mismatch_fails():
    assert compare(np.ones((2, 3)), np.ones((3, 2))).passed is False


def test_matching_non_finite_values_pass_and_new_nans_fail():
    ref = np.array([np.inf, np.nan, 1.0])
    assert compare(ref, ref.copy()).passed
    assert not compare(np.ones(3), np.array([1.0, np.nan, 1.0])).passed


def test_integer_outputs_tolerate_rare_label_flips_only():
    labels = np.arange(10000) % 18
    flipped = labels.copy()
    flipped[:5] += 1  # 0.05 % disagreement
    rare = compare(labels, flipped)
    assert rare.passed and rare.label_agreement == pytest.approx(0.9995)
    flipped[:50] += 1  # 0.5 %
    common = compare(labels, flipped)
    assert not common.passed and common.label_agreement == pytest.approx(0.995)


class _NumpyRunner:
    """An independent runtime: the model's math written again in numpy."""

    name = "onnxruntime"

    def __init__(self, offset_on_second_call: float = 0.0):
        self.calls = 0
        self.offset = offset_on_second_call

    def run(self, inputs):
        self.calls += 1
        (x,) = inputs
        out = np.maximum(x, 0) * 2
        return [out + (self.offset if self.calls % 2 == 0 else 0.0)]


def test_verify_compares_each_input_and_keeps_the_worst_repeat():
    def eager(inputs):
        return torch.relu(inputs.args[0]) * 2

    inputs = {"example": Inputs((torch.randn(5),)), "probe": Inputs((torch.randn(5),))}
    good = verify(_expected(eager, inputs), _NumpyRunner(), inputs)
    assert [(r.inputs, r.passed) for r in good] == [("example", True), ("probe", True)]
    racy = verify(_expected(eager, inputs), _NumpyRunner(offset_on_second_call=0.5), inputs,
                  repeats=2)
    assert not any(r.passed for r in racy)
    assert all(r.max_abs_diff == pytest.approx(0.5) for r in racy)


def test_a_runtime_error_is_a_failed_record():
    class Refuses:
        name = "openvino"

        def run(self, inputs):
            raise RuntimeError(  # how OpenVINO 2026.4 words it
                "Exception from src/inference/src/cpp/core.cpp:112:\n"
                "Exception from src/plugins/intel_cpu/src/node.cpp:87:\n"
                "CPU plug-in doesn't support Parameter operation with dynamic rank.\n")

    inputs = {"probe": Inputs((torch.ones(2),))}
    records = verify(_expected(lambda i: i.args[0] + 1, inputs), Refuses(), inputs)
    assert len(records) == 1 and not records[0].passed and records[0].runtime_failed
    assert records[0].error == ("RuntimeError: CPU plug-in doesn't support Parameter operation "
                                "with dynamic rank.")  # the location noise is dropped


def test_finite_float32_fast_path_agrees_with_the_general_one():
    rng = np.random.default_rng(0)
    reference = (rng.normal(size=(64, 18)) * 50).astype(np.float32)
    for noise in (1e-5, 1e-2, 1.0):
        actual = reference + (rng.normal(size=reference.shape) * noise).astype(np.float32)
        fast = compare(reference, actual)
        general = compare(reference.astype(np.float64), actual.astype(np.float64))
        assert fast.passed == general.passed
        assert (fast.max_abs_diff, fast.max_rel_diff) == pytest.approx(
            (general.max_abs_diff, general.max_rel_diff), rel=1e-6)


# --- per-output tolerances (a script's `tolerances`) --------------------------------------------

def test_share_lets_a_counted_few_elements_off_and_no_more():
    ref = np.linspace(1, 2, 10_000, dtype=np.float32)
    act = ref.copy()
    act[[5, 17]] += 1.0  # two elements off, e.g. the cells around a point that moved
    strict = compare(ref, act)
    assert not strict.passed and (strict.outside, strict.elements) == (2, 10_000)
    assert compare(ref, act, Tolerance(share=0.9998)).passed
    assert not compare(ref, act, Tolerance(share=0.9999)).passed  # 1 allowed, 2 off


def test_rtol_and_atol_replace_the_dtype_defaults():
    ref = np.ones(100, dtype=np.float32)
    assert not compare(ref, ref + 0.01).passed
    assert compare(ref, ref + 0.01, Tolerance(rtol=0.02)).passed
    assert compare(ref, ref + 0.01, Tolerance(rtol=0.0, atol=0.011)).passed


def test_argmax_judges_scores_by_the_labels_they_give():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((500, 4)).astype(np.float32)
    shifted = ref + 0.5  # far beyond tolerance, same labels everywhere
    judged = compare(ref, shifted, Tolerance(argmax=True))
    assert judged.passed and judged.label_agreement == 1.0 and judged.outside == 2000
    flipped = ref.copy()
    flipped[0] = -flipped[0] * 10  # one row's label changes: 1 of 500 = 99.8 % agree
    assert not compare(ref, flipped, Tolerance(argmax=True)).passed
    assert compare(ref, flipped, Tolerance(argmax=True, share=0.998)).passed


def test_integer_outputs_count_the_unequal_elements():
    ref = np.arange(5000, dtype=np.int32)
    act = ref.copy()
    act[:3] = -1  # three points in another cell
    result = compare(ref, act)
    assert result.passed and (result.outside, result.elements) == (3, 5000)
    assert result.label_agreement == pytest.approx(1 - 3 / 5000)
    assert not compare(ref, act, Tolerance(share=1.0)).passed


@pytest.mark.parametrize("value, expected", [
    ([1], "not a dict"),
    ({"logits": 0.1}, "must map an output name"),
    ({"logits": {"rtl": 0.1}}, "['rtl']"),
    ({"logits": {"share": 1.5}}, "in (0, 1]"),
    ({"logits": {"atol": -1}}, ">= 0"),
    ({"logits": {"argmax": 1}}, "True or False"),
])
def test_malformed_tolerances_are_named(value, expected):
    with pytest.raises(ValueError, match=None) as error:
        parse_tolerances(value, "model.py")
    assert expected in str(error.value)


def test_tolerances_parse_into_per_output_records():
    assert parse_tolerances({"logits": {"argmax": True, "share": 0.99}, "boxes": {"atol": 1}},
                            "m.py") == {"logits": Tolerance(share=0.99, argmax=True),
                                        "boxes": Tolerance(atol=1.0)}


_TOLERANCE_SCRIPT = """
import torch

class Net(torch.nn.Module):
    def forward(self, x):
        return {{"scores": x * 3.0, "labels": x.argmax(-1)}}

def get_model():
    return Net()

def get_inputs():
    return (torch.randn(4, 5, generator=torch.Generator().manual_seed(0)),)

tolerances = {tolerances}
"""


def test_a_script_tolerance_reaches_verification(cli, write_script, tmp_path):
    script = write_script(_TOLERANCE_SCRIPT.format(tolerances='{"scores": {"argmax": True}}'))
    code, _, _ = cli("--out", tmp_path, script)
    report = read_report(tmp_path)
    assert code == 0
    scores = [v for v in report["verification"] if v["output"] == "scores"]
    assert scores and all(v["label_agreement"] == 1.0 for v in scores)  # judged by argmax
    labels = [v for v in report["verification"] if v["output"] == "labels"]
    assert labels and all("label_agreement" in v and v["outside"] == 0 for v in labels)


@pytest.mark.parametrize("tolerances, expected", [
    ('{"scores": {"share": 2}}', "in (0, 1]"),
    ('{"logits": {"argmax": True}}', "'logits', which the model does not return"),
])
def test_unusable_tolerances_exit_2_naming_them(cli, write_script, tmp_path, tolerances,
                                                expected):
    code, _, err = cli("--out", tmp_path, write_script(
        _TOLERANCE_SCRIPT.format(tolerances=tolerances)))
    assert code == 2 and "`tolerances" in err and expected in err
    assert (tmp_path / "report.json").exists()  # the report is still written
