"""Issue #15: IR ready for devices this machine lacks (--static, --device), and progress
that tells the truth without polluting redirected output."""

import io
import subprocess
import sys

import openvino as ov
import pytest
from helpers import REPO, read_report
from rich.console import Console

from dynexport import progress
from dynexport.console import StageProgress

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow


def _static(shape) -> bool:
    return shape.is_static


def test_static_ir_has_only_static_shapes_and_verifies(cli, tmp_path):
    out = tmp_path / "out"  # convnet declares batch, height and width dynamic
    code, stdout, _ = cli("--out", out, "--static", REPO / "examples" / "convnet.py")
    assert code == 0, stdout
    report = read_report(out)
    assert all(v["passed"] for v in report["verification"])
    assert any("generated probe" in note for note in report["notes"])
    model = ov.Core().read_model(out / "openvino" / "model.xml")
    assert all(p.get_partial_shape().is_static for p in model.get_parameters())
    assert all(r.get_output_partial_shape(0).is_static for r in model.get_results())
    assert [list(p.get_shape()) for p in model.get_parameters()] == [[2, 3, 32, 32]]


@pytest.mark.parametrize("ranks", ["graph", "padded"])
def test_static_flashocc_tiny(cli, tmp_path, ranks):
    """Ranks in the graph, or as inputs padded to sizes no camera changes: every shape is
    fixed, and the script's own probe (another rig) still runs on the fixed sizes."""
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--static", "--to", "openvino",
                          REPO / "examples" / "flashocc.py", "--config", "tiny",
                          "--ranks", ranks)
    assert code == 0, stdout
    model = ov.Core().read_model(out / "openvino" / "model.xml")
    assert all(p.get_partial_shape().is_static for p in model.get_parameters())
    assert all(r.get_output_partial_shape(0).is_static for r in model.get_results())
    report = read_report(out)
    assert all(v["passed"] for v in report["verification"])
    assert not any("generated probe" in note for note in report.get("notes", []))
    assert len(model.get_parameters()) == (7 if ranks == "graph" else 6)


def test_absent_device_exits_2_naming_the_devices_and_keeps_the_ir(cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = cli("--out", out, "--device", "NPU", REPO / "examples" / "convnet.py")
    assert code == 2
    assert "--device NPU is not on this machine" in err and "CPU" in err
    assert (out / "openvino" / "model.xml").is_file() and (out / "model.onnx").is_file()
    stages = {s["name"]: s for s in read_report(out)["stages"]}
    assert stages["verify"]["status"] == "skipped" and "NPU" in stages["verify"]["error"]


def test_auto_device_verifies(cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, "--device", "AUTO", "--to", "openvino",
                          REPO / "examples" / "convnet.py")
    assert code == 0, stdout


def test_progress_is_plain_when_output_is_redirected(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dynexport", "--out", str(tmp_path / "out"),
                           "--to", "onnx", str(REPO / "examples" / "convnet.py")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\r" not in done.stdout
    assert "✓ capture" in done.stdout


def test_steps_show_on_the_live_line_of_a_terminal():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with StageProgress(console) as display:
        display.started("verify")
        progress.step("openvino on the probe input")
        task = display.tasks["verify"]
        description = next(t.description for t in display.progress.tasks if t.id == task)
    assert description == "verify · openvino on the probe input …"


def test_steps_of_an_isolated_child_reach_the_parents_listener():
    from dynexport.isolation import run_isolated

    heard = []

    def child_work():
        progress.step("compiling model.xml")
        progress.step("openvino on the example input")
        return 7

    with progress.listening(lambda name, stage: heard.append(name)):
        assert run_isolated(child_work, "a step") == 7
    assert heard == ["compiling model.xml", "openvino on the example input"]


def test_stage_errors_keep_their_brackets_on_the_console():
    """An install hint such as `-e ".[precision]"` is text, not rich markup."""
    from dynexport.stage import StageRecord

    out = io.StringIO()
    with StageProgress(Console(file=out, width=200)) as display:
        display.finished(StageRecord("precision", "failed", error='needs NNCF: pip install '
                                     '-c constraints.txt -e ".[precision]"'), None)
        display.finished(StageRecord("serving", "skipped", error="[x] skipped"), None)
    assert '-e ".[precision]"' in out.getvalue() and "[x] skipped" in out.getvalue()
