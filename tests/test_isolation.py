"""Issue #27: a forked child never touches what it inherited from the parent's threads, and a
child that hangs anyway is ended at its deadline with its stack, the report kept."""

import gc
import io
import sys
import threading
import time

import numpy as np
import pytest
from helpers import REPO, read_report

from dynexport import progress
from dynexport.isolation import ChildHang, Isolation, run_isolated

QUICK = Isolation(deadline=60)  # far above what each step below needs when it works


def _compiled_model_in_a_cycle() -> None:
    """An OpenVINO CompiledModel that only the garbage collector can free, whose executor
    threads have run (so the parent's threads wait on its condition variable)."""
    import openvino as ov
    from openvino import opset13 as ops

    image = ops.parameter([1, 16, 64, 64], np.float32)
    weights = ops.constant(np.random.default_rng(0).random((16, 16, 3, 3), np.float32))
    model = ov.Model([ops.relu(ops.convolution(image, weights, [1, 1], [1, 1], [1, 1],
                                               [1, 1]))], [image])

    class Holder:
        pass

    holder = Holder()
    holder.itself = holder
    holder.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    holder.compiled.create_infer_request().infer([np.ones((1, 16, 64, 64), np.float32)])


def test_child_does_not_finalise_the_parents_garbage():
    """Without gc.freeze around the fork, the child's collector destroys the CompiledModel and
    its destructor waits forever for threads that exist only in the parent."""
    enabled = gc.isenabled()
    gc.disable()  # keep the garbage uncollected in the parent until the fork, as a busy run does
    try:
        _compiled_model_in_a_cycle()

        def collect() -> int:
            gc.collect()
            return 1

        assert run_isolated(collect, "collecting in the child", QUICK) == 1
    finally:
        if enabled:
            gc.enable()
        gc.collect()  # the parent, where the destructor can run, frees it


def test_child_does_not_write_through_the_live_displays_locked_proxy():
    """rich's live display replaces sys.stderr with a proxy whose writes take the display's
    lock; its refresh thread holds that lock while rendering. A fork at that moment leaves the
    lock held for good in the child, whose first warning would wait for it forever."""
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn

    class SlowColumn(ProgressColumn):  # rendering holds the display's lock most of the time
        def render(self, task):
            time.sleep(0.3)
            return ""

    display = Progress(SlowColumn(), console=Console(file=io.StringIO(), force_terminal=True),
                       refresh_per_second=20)

    def warn() -> int:
        print("a warning from the child", file=sys.stderr)
        return 1

    with display:
        display.add_task("stage", total=1)
        assert sys.stderr is not sys.__stderr__  # the display's proxy is in place
        for _ in range(3):  # each fork lands inside a render with high probability
            time.sleep(0.1)
            assert run_isolated(warn, "a warning in the child", QUICK) == 1


def test_hung_child_is_ended_at_its_deadline_with_its_stack(tmp_path):
    never = threading.Event()

    def stuck_in_a_wait() -> None:
        progress.step("waiting for something")
        never.wait()

    with pytest.raises(ChildHang) as hang:  # without a deadline: the test's own timeout
        run_isolated(stuck_in_a_wait, "a stuck step",
                     Isolation(deadline=3, stacks_dir=tmp_path))
    message = str(hang.value)
    assert "a stuck step did not finish within 3 s" in message
    assert "waiting for something" in message  # the last step the child announced
    assert "stuck_in_a_wait" in message  # its innermost frames
    assert "--stage-timeout" in message
    kept = tmp_path / "hang_a_stuck_step.txt"
    assert kept.is_file() and "stuck_in_a_wait" in kept.read_text()


def test_hung_child_keeps_no_stack_file_without_debug(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ChildHang) as hang:
        run_isolated(lambda: time.sleep(600), "a sleeping step", Isolation(deadline=2))
    assert "Run with --debug" in str(hang.value)
    assert list(tmp_path.iterdir()) == []


def _hangs(program):
    time.sleep(600)


def test_hung_conversion_keeps_the_other_artifacts_and_the_report(cli, tmp_path, monkeypatch):
    import dynexport.conversion

    monkeypatch.setattr(dynexport.conversion, "to_openvino", _hangs)
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, "--stage-timeout", "20", "--debug",
                     REPO / "examples" / "convnet.py")
    assert code == 1
    stages = {s["name"]: s for s in read_report(out)["stages"]}
    assert stages["openvino"]["status"] == "failed"
    assert "did not finish within 20 s" in stages["openvino"]["error"]
    assert "_hangs" in stages["openvino"]["error"]
    assert (out / "hang_the_openvino_conversion.txt").is_file()
    assert stages["onnx"]["status"] == "ok" and (out / "model.onnx").is_file()
    assert stages["verify"]["status"] == "ok"


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_stage_timeout_must_be_a_positive_number(cli, tmp_path, value):
    code, _, err = cli("--out", tmp_path / "out", "--stage-timeout", value,
                       REPO / "examples" / "convnet.py")
    assert code == 2
    assert "--stage-timeout" in err
