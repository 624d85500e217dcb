"""Contract §2: get_validation_data() + metric() give an accuracy table per runtime and
precision; a metric or validation function that fails exits 2 and keeps what was written."""

import numpy as np
import pytest
import torch
from helpers import read_report

from dynexport.measure import label_agreement

CLASSIFIER = """
import torch
from torch import nn

class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return {{"logits": self.fc(x), "labels": self.fc(x).argmax(-1)}}

def get_model():
    return Classifier().eval()

def get_inputs():
    return (torch.randn(8, 6, generator=torch.Generator().manual_seed(1)),)

def get_validation_data():
    g = torch.Generator().manual_seed(2)
    return [((torch.randn(8, 6, generator=g),), torch.randint(0, 4, (8,), generator=g))
            for _ in range(3)]

def metric(outputs, targets):
{metric}
"""

ACCURACY = """    right = sum(int((o["labels"] == t).sum()) for o, t in zip(outputs, targets))
    return {"accuracy": 100.0 * right / sum(len(t) for t in targets), "samples": len(outputs)}
"""


def validation_labels() -> list[tuple[np.ndarray, np.ndarray]]:
    """CLASSIFIER's labels of each validation sample computed independently (the linear layer
    in numpy), with the sample's target."""
    torch.manual_seed(0)
    fc = torch.nn.Linear(6, 4)
    weight, bias = fc.weight.detach().numpy(), fc.bias.detach().numpy()
    g = torch.Generator().manual_seed(2)
    pairs = []
    for _ in range(3):
        x, t = torch.randn(8, 6, generator=g).numpy(), torch.randint(0, 4, (8,), generator=g)
        pairs.append(((x @ weight.T + bias).argmax(-1), t.numpy()))
    return pairs


def _expected_accuracy() -> float:
    """The same accuracy computed independently."""
    pairs = validation_labels()
    right = sum(int((labels == target).sum()) for labels, target in pairs)
    return 100.0 * right / sum(len(target) for _, target in pairs)


def test_accuracy_table_per_runtime(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, write_script(CLASSIFIER.format(metric=ACCURACY)))
    assert code == 0, stdout
    accuracy = read_report(out)["accuracy"]
    assert accuracy["metric"] == "accuracy" and accuracy["samples"] == 3
    rows = {(r["runtime"], r["precision"]): r for r in accuracy["rows"]}
    assert set(rows) == {("eager", "f32"), ("onnxruntime", "f32"), ("openvino", "f32")}
    for row in rows.values():
        assert row["value"] == pytest.approx(_expected_accuracy())
        assert row["delta"] == pytest.approx(0.0)
    for runtime in ("onnxruntime", "openvino"):  # the labels output, over the 3 samples
        assert rows[runtime, "f32"]["label_agreement"] == {"labels": 1.0}
    assert "## Accuracy" in (out / "report.md").read_text()


def test_label_agreement_counts_equal_labels_over_every_sample():
    reference = [{"labels": torch.tensor([1, 2, 3, 4]), "scores": torch.zeros(4)},
                 {"labels": torch.tensor([5, 6]), "scores": torch.zeros(2)}]
    outputs = [{"labels": torch.tensor([1, 2, 0, 4]), "scores": torch.ones(4)},
               {"labels": torch.tensor([5, 6]), "scores": torch.ones(2)}]
    assert label_agreement(reference, outputs) == {"labels": 5 / 6}  # floats are not labels


def test_precision_variant_gets_its_row(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--precision", "bf16", "--to", "openvino",
                          write_script(CLASSIFIER.format(metric=ACCURACY)))
    assert code == 0, stdout
    rows = read_report(out)["accuracy"]["rows"]
    assert [(r["runtime"], r["precision"]) for r in rows] == [
        ("eager", "f32"), ("openvino", "f32"), ("openvino", "bf16")]
    assert np.isfinite([r["value"] for r in rows]).all()


def test_a_failing_metric_exits_2_and_keeps_the_artifacts(cli, write_script, tmp_path):
    out = tmp_path / "out"
    broken = "    return {'accuracy': outputs[0]['missing']}\n"
    code, _, err = cli("--out", out, write_script(CLASSIFIER.format(metric=broken)))
    assert code == 2
    assert "`metric(outputs, targets)`" in err and "KeyError" in err
    report = read_report(out)
    stages = {s["name"]: s["status"] for s in report["stages"]}
    assert stages["verify"] == "ok" and stages["accuracy"] == "failed"
    assert (out / "model.onnx").is_file() and (out / "openvino" / "model.xml").is_file()


def test_validation_data_of_the_wrong_form_exits_2(cli, write_script, tmp_path):
    source = CLASSIFIER.format(metric=ACCURACY).replace(
        "def get_validation_data():", "def get_validation_data():\n    return [torch.ones(3)]\n"
        "\ndef _unused():")
    code, _, err = cli("--out", tmp_path / "out", write_script(source))
    assert code == 2 and "get_validation_data()" in err and "(inputs, target) pairs" in err


def test_metric_must_return_numbers(cli, write_script, tmp_path):
    code, _, err = cli("--out", tmp_path / "out",
                       write_script(CLASSIFIER.format(metric="    return 0.5\n")))
    assert code == 2 and "not a non-empty dict of names to numbers" in err


def test_without_a_metric_there_is_no_accuracy_stage(cli, write_script, tmp_path):
    out = tmp_path / "out"
    source = CLASSIFIER.format(metric=ACCURACY).replace("def metric(", "def _not_metric(")
    code, _, _ = cli("--out", out, write_script(source))
    assert code == 0
    report = read_report(out)
    assert "accuracy" not in report
    assert "accuracy" not in {s["name"] for s in report["stages"]}
    labels = [v for v in report["verification"] if v["output"] == "labels"]
    assert labels and all(v["label_agreement"] == 1.0 for v in labels)



def test_precision_auto_picks_the_fastest_within_budget(cli, write_script, tmp_path,
                                                       monkeypatch):
    from dynexport import measure

    out, calls = tmp_path / "out", tmp_path / "validation_calls"
    counted = CLASSIFIER.format(metric=ACCURACY).replace(
        "def get_validation_data():\n",
        f"def get_validation_data():\n    open({str(calls)!r}, 'a').write('x')\n")
    samples: list[int] = []
    real_call = measure.eager_call

    def counted_call(model, method):
        call = real_call(model, method)
        return lambda inputs: samples.append(1) or call(inputs)

    monkeypatch.setattr(measure, "eager_call", counted_call)
    code, stdout, _ = cli("--out", out, "--precision", "auto", "--accuracy-budget", "5",
                          "--to", "openvino", write_script(counted))
    assert code == 0, stdout
    # made once, though int8's accuracy control, each candidate and the accuracy stage read it
    assert calls.read_text() == "x"
    # eager's reference too: once per validation sample in the run, not once per measurement
    assert len(samples) == 3
    report = read_report(out)
    precision = report["precision"]
    tried = {c["precision"]: c for c in precision["candidates"]}
    assert set(tried) == {"bf16", "f16", "int8"}
    made = [c for c in tried.values() if "value" in c]
    assert {"bf16", "f16"} <= {c["precision"] for c in made}  # int8 needs NNCF
    within = [c for c in made if c["delta"] >= -5]
    fastest = min(within, key=lambda c: c["median_ms"])["precision"] if within else "f32"
    assert precision["precision"] == fastest and fastest in precision["chosen_because"]
    rows = {(r["runtime"], r["precision"]) for r in report["accuracy"]["rows"]}
    assert {("openvino", c["precision"]) for c in made} <= rows


def test_precision_auto_needs_a_metric(cli, write_script, tmp_path):
    source = CLASSIFIER.format(metric=ACCURACY).replace("def metric(", "def _not_metric(")
    code, _, err = cli("--out", tmp_path / "out", "--precision", "auto", write_script(source))
    assert code == 2 and "--precision auto chooses by accuracy" in err


def test_no_verify_skips_the_accuracy_stage_too(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, "--no-verify", write_script(CLASSIFIER.format(metric=ACCURACY)))
    assert code == 0
    report = read_report(out)
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["accuracy"]["status"] == "skipped" and "accuracy" not in report
