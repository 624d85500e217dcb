"""How the pipeline runs its stages: a started stage runs on beside the next ones until its
result is read; what the eager stage runs on."""

from dynexport.eager import EagerRun
from dynexport.pipeline import execute
from dynexport.script import load_script
from dynexport.stage import ABSENT, Options, Request, Run, Stage
from dynexport.stages.eager import EAGER_STAGE


class _Later:
    """A Started whose result is taken when somebody asks for it."""

    def __init__(self, log: list[str]):
        self.log, self.seconds = log, 0.25

    def result(self) -> str:
        self.log.append("onnx finished")
        return "outputs"


def test_a_started_stage_runs_beside_the_next_ones_until_read(tmp_path):
    log: list[str] = []
    plan = [
        Stage("onnx", lambda run: None, start=lambda run: _Later(log)),
        Stage("openvino", lambda run: log.append("openvino ran")),
        Stage("verify", lambda run: log.append(f"verify read {run.result('onnx', str)}"),
              needs=("onnx",)),
    ]
    run = execute(Run("script.py", [], Options(out_dir=tmp_path)), plan)
    assert log == ["openvino ran", "onnx finished", "verify read outputs"]
    assert [record.name for record in run.records] == ["onnx", "openvino", "verify"]
    assert run.records[0].seconds == 0.25  # the work's own time, not the wait for it


def test_a_started_stage_nobody_reads_is_recorded_at_the_end(tmp_path):
    log: list[str] = []
    plan = [Stage("onnx", lambda run: None, start=lambda run: _Later(log)),
            Stage("openvino", lambda run: log.append("openvino ran"))]
    run = execute(Run("script.py", [], Options(out_dir=tmp_path)), plan)
    assert log == ["openvino ran", "onnx finished"]
    assert run.results["onnx"] == "outputs"
    assert [(r.name, r.status) for r in run.records] == [("onnx", "ok"), ("openvino", "ok")]


def test_a_stage_is_wanted_skipped_with_its_reason_or_absent(tmp_path):
    ran: list[str] = []
    plan = [Stage(name, lambda run, name=name: ran.append(name), requested=lambda run, r=r: r)
            for name, r in [("onnx", Request.when(True)),
                            ("verify", Request.skipped_unless("--no-verify")),
                            ("benchmark", ABSENT)]]
    run = execute(Run("script.py", [], Options(out_dir=tmp_path)), plan)
    assert ran == ["onnx"]
    assert [(r.name, r.status, r.error) for r in run.records] == [
        ("onnx", "ok", None), ("verify", "skipped", "--no-verify")]  # absent: no record at all


def test_a_shared_value_is_made_once_per_run(tmp_path):
    made: list[int] = []
    plan = [Stage(name, lambda run: run.once("reference", lambda: made.append(1) or "value"))
            for name in ("precision", "accuracy")]
    for _ in range(2):
        run = execute(Run("script.py", [], Options(out_dir=tmp_path)), plan)
        assert run.results == {"precision": "value", "accuracy": "value"}
    assert made == [1, 1]  # once in each of the two runs


SCRIPT = '''
import torch


class Model(torch.nn.Module):
    def forward(self, x):
        return x * 2


def get_model():
    return Model()


def get_inputs():
    return (torch.ones(3),)
'''


def eager_of(tmp_path, verify: bool) -> tuple[EagerRun, object]:
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    script = load_script(path, [])
    run = Run(str(path), [], Options(out_dir=tmp_path, verify=verify))
    run.results["load"] = script
    return EAGER_STAGE.work(run), script


def test_no_verify_runs_eager_on_the_example_only(tmp_path):
    eager, script = eager_of(tmp_path, verify=False)
    assert list(eager.outputs) == ["example"]  # only verification compares on the probe
    assert eager.inputs["probe"] is script.probe  # still there for --precision calibration
    eager, _ = eager_of(tmp_path, verify=True)
    assert list(eager.outputs) == ["example", "probe"]
