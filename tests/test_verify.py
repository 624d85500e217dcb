import os
import weakref

import numpy as np
import pytest
import torch
from helpers import read_report

from dynexport.inputs import Inputs, flatten_outputs
from dynexport.tolerance import Tolerance, parse_tolerances
from dynexport.verify import (
    RACE_THREADS_REPEATS,
    RACING_KERNEL_REPEATS,
    Session,
    compare,
    verification_sessions,
    verify,
)


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
    """An independent runtime: the model's math written again in numpy, off by `offsets[i]`
    on its i-th call (cycling)."""

    name = "onnxruntime"

    def __init__(self, offsets=(0.0,)):
        self.calls = 0
        self.offsets = offsets

    def run(self, inputs):
        (x,) = inputs
        offset = self.offsets[self.calls % len(self.offsets)]
        self.calls += 1
        return [np.maximum(x, 0) * 2 + offset]


def _relu2(inputs):
    return torch.relu(inputs.args[0]) * 2


def test_verify_compares_each_input_and_keeps_the_worst_repeat():
    inputs = {"example": Inputs((torch.randn(5),)), "probe": Inputs((torch.randn(5),))}
    good = verify("onnxruntime", _expected(_relu2, inputs), [Session(_NumpyRunner, 2)], inputs)
    assert [(r.inputs, r.passed) for r in good] == [("example", True), ("probe", True)]
    assert all(r.self_max_abs_diff == 0 and r.self_disagreement is None for r in good)
    assert all("self_max_abs_diff" not in r.to_json() for r in good)
    racy = verify("onnxruntime", _expected(_relu2, inputs),
                  [Session(lambda: _NumpyRunner((0.0, 0.5)), 2)], inputs)
    assert not any(r.passed for r in racy)
    assert all(r.max_abs_diff == pytest.approx(0.5) for r in racy)
    assert [r.self_disagreement for r in racy] == ["2 runs: max abs 0.5"] * 2


def test_self_disagreement_names_the_settings_that_disagreed():
    inputs = {"example": Inputs((torch.randn(50),))}
    # one thread exact; four threads off by 0.25 on one run of three, 1.5 on another
    sessions = [Session(_NumpyRunner, 1, "1 thread"),
                Session(lambda: _NumpyRunner((0.0, 0.25, 1.5)), 3, "4 threads")]
    (record,) = verify("onnxruntime", _expected(_relu2, inputs), sessions, inputs)
    assert not record.passed and record.max_abs_diff == pytest.approx(1.5)  # the worst run
    assert record.self_max_abs_diff == pytest.approx(1.5)
    assert record.self_disagreement == ("1 thread vs 4 threads: max abs 1.5; "
                                        "3 runs at 4 threads: max abs 1.5")
    data = record.to_json()
    assert data["self_max_abs_diff"] == pytest.approx(1.5)
    assert data["self_disagreement"] == record.self_disagreement
    assert record.cells()[-1] == record.self_disagreement
    # runs that agree with each other but not with eager: wrong, yet deterministic
    steady = [Session(lambda: _NumpyRunner((0.5,)), 1, "1 thread"),
              Session(lambda: _NumpyRunner((0.5,)), 3, "4 threads")]
    (record,) = verify("onnxruntime", _expected(_relu2, inputs), steady, inputs)
    assert not record.passed and record.self_disagreement is None
    assert record.self_max_abs_diff == 0.0


def test_one_session_is_open_at_a_time_and_one_that_cannot_open_fails_every_record():
    inputs = {"example": Inputs((torch.randn(5),)), "probe": Inputs((torch.randn(5),))}
    alive = weakref.WeakSet()

    class Tracked(_NumpyRunner):
        def __init__(self):
            super().__init__()
            assert not alive, "the previous session is still open"
            alive.add(self)

    records = verify("onnxruntime", _expected(_relu2, inputs),
                     [Session(Tracked, 1, "1 thread"), Session(Tracked, 2, "4 threads")], inputs)
    assert [(r.inputs, r.passed) for r in records] == [("example", True), ("probe", True)]

    def refuses():
        raise RuntimeError("cannot compile")

    records = verify("onnxruntime", _expected(_relu2, inputs),
                     [Session(_NumpyRunner, 1, "1 thread"), Session(refuses, 2, "4 threads")],
                     inputs)
    assert all(r.runtime_failed and r.error == "compiling: RuntimeError: cannot compile"
               for r in records) and len(records) == 2


def _scatter_model(path, reduction: str) -> None:
    """data[indices] (reduction)= updates, as an ONNX file."""
    from onnx import TensorProto, helper, save

    tensor = helper.make_tensor_value_info
    save(helper.make_model(helper.make_graph(
        [helper.make_node("ScatterND", ["data", "indices", "updates"], ["out"],
                          reduction=reduction)], "g",
        [tensor("data", TensorProto.FLOAT, [4]), tensor("indices", TensorProto.INT64, [3, 1]),
         tensor("updates", TensorProto.FLOAT, [3])],
        [tensor("out", TensorProto.FLOAT, [4])]),
        opset_imports=[helper.make_opsetid("", 18)]), path)


@pytest.mark.parametrize("reduction, repeats", [("none", RACE_THREADS_REPEATS),
                                                ("add", RACING_KERNEL_REPEATS)])
def test_onnxruntime_runs_at_one_thread_then_more_when_a_kernel_races(tmp_path, reduction,
                                                                        repeats):
    _scatter_model(tmp_path / "m.onnx", reduction)
    one, many = verification_sessions("onnxruntime", tmp_path / "m.onnx")
    threads = max(4, os.cpu_count())
    assert [(s.repeats, s.settings) for s in (one, many)] == [
        (1, "1 thread"), (repeats, f"{threads} threads")]
    assert [s.open().session.get_session_options().intra_op_num_threads
            for s in (one, many)] == [1, threads]
    inputs = {"example": Inputs((torch.zeros(4), torch.tensor([[1], [1], [3]]),
                                 torch.tensor([1.0, 2.0, 4.0])))}
    expected = {"example": [("out", np.array([0.0, 3.0 if reduction == "add" else 2.0, 0.0,
                                              4.0], dtype=np.float32))]}
    (record,) = verify("onnxruntime", expected, [one, many], inputs)
    assert record.passed and record.max_abs_diff == 0


def test_self_disagreement_of_integer_and_non_finite_outputs():
    class Labels:
        name = "openvino"

        def __init__(self):
            self.calls = 0

        def run(self, inputs):
            self.calls += 1
            labels = np.arange(6)
            scores = np.array([np.nan, np.inf, 1.0])
            if self.calls == 2:
                labels[0] = 3  # one flipped label on the second run
            return [labels, scores]

    def eager(inputs):
        return {"labels": torch.arange(6), "scores": torch.tensor([np.nan, np.inf, 1.0])}

    inputs = {"example": Inputs((torch.ones(1),))}
    labels, scores = verify("openvino", _expected(eager, inputs), [Session(Labels, 2)], inputs)
    assert labels.self_disagreement == "2 runs: max abs 3"
    assert scores.self_disagreement is None  # the same NaN and inf on both runs


def test_a_runtime_error_is_a_failed_record():
    class Refuses:
        name = "openvino"

        def run(self, inputs):
            raise RuntimeError(  # how OpenVINO 2026.4 words it
                "Exception from src/inference/src/cpp/core.cpp:112:\n"
                "Exception from src/plugins/intel_cpu/src/node.cpp:87:\n"
                "CPU plug-in doesn't support Parameter operation with dynamic rank.\n")

    inputs = {"probe": Inputs((torch.ones(2),))}
    records = verify("openvino", _expected(lambda i: i.args[0] + 1, inputs), [Session(Refuses)],
                     inputs)
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
