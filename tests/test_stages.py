"""How the pipeline runs its stages: a started stage runs on beside the next ones until its
result is read; what the eager stage runs on."""

from dynexport.eager import EagerRun
from dynexport.pipeline import execute
from dynexport.script import load_script
from dynexport.stage import Options, Run, Stage
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
    state = execute(Run("script.py", [], Options(out_dir=tmp_path)), plan)
    assert log == ["openvino ran", "onnx finished", "verify read outputs"]
    assert [record.name for record in state.records] == ["onnx", "openvino", "verify"]
    assert state.records[0].seconds == 0.25  # the work's own time, not the wait for it


def test_a_started_stage_nobody_reads_is_recorded_at_the_end(tmp_path):
    log: list[str] = []
    plan = [Stage("onnx", lambda run: None, start=lambda run: _Later(log)),
            Stage("openvino", lambda run: log.append("openvino ran"))]
    state = execute(Run("script.py", [], Options(out_dir=tmp_path)), plan)
    assert log == ["openvino ran", "onnx finished"]
    assert state.results["onnx"] == "outputs"
    assert [(r.name, r.status) for r in state.records] == [("onnx", "ok"), ("openvino", "ok")]


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
    return EAGER_STAGE.run(run), script


def test_no_verify_runs_eager_on_the_example_only(tmp_path):
    eager, script = eager_of(tmp_path, verify=False)
    assert list(eager.outputs) == ["example"]  # only verification compares on the probe
    assert eager.inputs["probe"] is script.probe  # still there for --precision calibration
    eager, _ = eager_of(tmp_path, verify=True)
    assert list(eager.outputs) == ["example", "probe"]
