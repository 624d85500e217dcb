"""`python -m dynexport sweep` (issue #28): which scripts it plans, what decides a re-run, the
row made from a report and the raw route, the regression view, the timeout that ends a hung
run with its processes, and the command end to end on scripts that fail fast."""

import json
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from dynexport.__main__ import main
from dynexport.sweep.compare import compare
from dynexport.sweep.plan import Job, PlanError, fingerprint, plan
from dynexport.sweep.run import run_process
from dynexport.sweep.table import SCHEMA, columns, make_row, markdown_table

FIXTURES = REPO / "tests" / "fixtures" / "sweep"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- plan -------------------------------------------------------------------------------------

def test_a_folder_gives_its_scripts_without_helpers(tmp_path):
    for name in ("b.py", "a.py", "_shared.py", "notes.txt"):
        write(tmp_path / "zoo" / name, "")
    jobs = plan([str(tmp_path / "zoo")], ["--to", "onnx"], 60, raw=True)
    assert [(j.name, j.script, j.options, j.timeout, j.raw) for j in jobs] == [
        ("a", str(tmp_path / "zoo" / "a.py"), ["--to", "onnx"], 60, True),
        ("b", str(tmp_path / "zoo" / "b.py"), ["--to", "onnx"], 60, True)]


def test_a_toml_list_gives_per_script_args_options_and_timeouts(tmp_path):
    write(tmp_path / "models" / "flashocc.py", "")
    write(tmp_path / "models" / "resnet.py", "")
    listing = write(tmp_path / "zoo.toml", """
[defaults]
options = ["--to", "openvino"]
timeout = 100

[[scripts]]
path = "models/flashocc.py"
name = "flashocc-tiny"
args = ["--config", "tiny"]
options = ["--precision", "bf16"]
timeout = 1800

[[scripts]]
path = "models/flashocc.py"

[[scripts]]
path = "models/flashocc.py"
""")
    jobs = plan([str(listing), str(tmp_path / "models" / "resnet.py")], ["--bench"], 50, False)
    assert [(j.script, j.name, j.args, j.options, j.timeout) for j in jobs] == [
        ("models/flashocc.py", "flashocc-tiny", ["--config", "tiny"],
         ["--bench", "--to", "openvino", "--precision", "bf16"], 1800),
        ("models/flashocc.py", "flashocc", [], ["--bench", "--to", "openvino"], 100),
        ("models/flashocc.py", "flashocc-2", [], ["--bench", "--to", "openvino"], 100),
        (str(tmp_path / "models" / "resnet.py"), "resnet", [], ["--bench"], 50)]
    assert jobs[0].path == tmp_path / "models" / "flashocc.py"


def test_a_yaml_list_is_read_like_a_toml_one(tmp_path):
    pytest.importorskip("yaml")
    write(tmp_path / "m.py", "")
    listing = write(tmp_path / "zoo.yaml", "scripts:\n  - m.py\n  - path: m.py\n"
                                           "    args: --size 64\n")
    assert [(j.name, j.args) for j in plan([str(listing)], [], 10, False)] == [
        ("m", []), ("m-2", ["--size", "64"])]


@pytest.mark.parametrize("text, fragment", [
    ("[[scripts]]\npath = 'missing.py'\n", "is not a file"),
    ("[[scripts]]\npath = 'm.py'\nflags = 1\n", "an entry of `scripts`"),
    ("title = 'no scripts'\n", "needs a `scripts` list"),
    ("[[scripts]\n", "is not valid TOML"),
])
def test_a_malformed_list_is_refused_with_what_is_wrong(tmp_path, text, fragment):
    write(tmp_path / "m.py", "")
    with pytest.raises(PlanError, match=fragment):
        plan([str(write(tmp_path / "zoo.toml", text))], [], 10, False)


def test_the_fingerprint_follows_the_script_its_local_imports_and_options(tmp_path):
    script = write(tmp_path / "model.py", "import _helpers\nimport torch\n")
    helper = write(tmp_path / "_helpers.py", "SIZE = 4\n")
    write(tmp_path / "unrelated.py", "")
    job = Job(str(script), script, "model")
    first = fingerprint(job)
    write(tmp_path / "unrelated.py", "changed = True\n")
    assert fingerprint(job) == first
    helper.write_text("SIZE = 5\n")
    second = fingerprint(job)
    assert second != first
    script.write_text("import _helpers\nimport torch  # edited\n")
    assert fingerprint(job) != second
    assert fingerprint(Job(str(script), script, "model", options=["--static"])) \
        != fingerprint(job)


# --- rows and the table -----------------------------------------------------------------------

def _report(verification, **extra):
    """A report.json as dynexport writes it (contract §3), for a model with two outputs."""
    return {"schema": "dynexport.report/1", "script": "det.py", "ok": True,
            "capture": {"strategy": "strict"},
            "stages": [{"name": n, "status": "ok", "seconds": 1.0, "artifact": None,
                        "error": None} for n in ("load", "capture", "onnx", "openvino",
                                                 "verify")],
            "hazards": [{"category": "graph_break", "severity": "warning",
                         "file": "/src/det.py", "line": 7, "code": "x", "message": "m",
                         "fix": "f"}],
            "unsupported_ops": [], "verification": verification, **extra}


def _check(runtime, inputs, diff, passed=True):
    return {"runtime": runtime, "inputs": inputs, "output": "boxes", "max_abs_diff": diff,
            "max_rel_diff": diff, "passed": passed, "outside": 0, "elements": 4}


def test_a_row_names_what_dynexport_fixed_where_the_raw_route_failed(tmp_path):
    job = Job("zoo/det.py", Path("zoo/det.py"), "det", raw=True)
    write(tmp_path / "det" / "dynexport" / "report.json", json.dumps(_report(
        [_check("onnxruntime", "example", 1e-6), _check("onnxruntime", "probe", 2e-6),
         _check("openvino", "example", 3e-6), _check("openvino", "probe", 5e-6)],
        handled=[{"what": "`dynexport.nms.default` from dynexport's op kit. ONNX: "
                          "NonMaxSuppression", "file": "/src/det.py", "line": 31, "code": "k",
                  "op_rewrite": True},
                 {"what": "output 1 has a length that depends on the data; kept dynamic",
                  "file": None, "line": None, "code": None}])))
    write(tmp_path / "det" / "raw" / "raw.json", json.dumps({
        "export": {"ok": True},
        "onnx": {"ok": True, "stage": "compare",
                 "checks": {"example": {"passed": True, "max_abs": 1e-6},
                            "probe": {"passed": True, "max_abs": 4e-6}}},
        "openvino": {"ok": False, "stage": "convert", "error": "PendingUnbackedSymbol"}}))
    outcome = {"exit": 0, "seconds": 12.5, "timed_out": False,
               "raw": {"exit": 0, "seconds": 8.0, "timed_out": False}}
    row = make_row(job, outcome, tmp_path, "f00d")
    assert (row["script"], row["exit"], row["report"], row["error"], row["seconds"]) == (
        "zoo/det.py", 0, "det/dynexport/report.json", None, 12.5)
    assert row["fixed"] == [
        "OpenVINO: `dynexport.nms.default` from dynexport's op kit at det.py:31"]
    assert row["rule"] == {"onnx": "ok", "openvino": "n/a", "exit": "n/a"}
    head, [cells] = columns([row], links=True)
    assert dict(zip(head, cells, strict=True)) == {
        "script": "zoo/det.py", "dynexport exit": "0", "capture": "strict",
        "dynexport ONNX+ORT": "pass (2.0e-06)", "raw ONNX+ORT": "pass (4.0e-06)",
        "dynexport OpenVINO": "pass (5.0e-06)", "raw OpenVINO": "FAIL (convert)",
        "raw torch.export": "ok", "rule": "onnx ok, openvino n/a, exit n/a",
        "hazards": "1: warning graph_break at det.py:7", "dynexport fixed": row["fixed"][0],
        "culprit": "-", "dynexport s": "12.5", "raw s": "8", "report": row["report"]}
    assert "[report](det/dynexport/report.md)" in markdown_table([row])


def test_a_row_names_the_top_divergence_culprit(tmp_path):
    job = Job("m.py", Path("m.py"), "m")
    culprit = {"op": "aten.scatter_add.default", "node": "scatter_add", "file": "/src/m.py",
               "line": 18, "code": "cells.scatter_add_(0, idx, x)", "max_abs_diff": 0.5,
               "max_rel_diff": 0.1, "input_max_abs_diff": 0.0, "translation": "exporter",
               "translated_by": None}
    write(tmp_path / "m" / "dynexport" / "report.json", json.dumps(_report(
        [_check("openvino", "example", 0.5, passed=False)],
        divergence=[{"runtime": "openvino", "precision": "f32", "inputs": "example",
                     "cause": "lowering", "culprits": [culprit, {**culprit, "line": 40}],
                     "fix": "f", "seconds": 1.0, "measured": "", "compared": 3,
                     "nodes": 3}])))
    row = make_row(job, {"exit": 1, "seconds": 3.0, "timed_out": False}, tmp_path, "f")
    expected = ("openvino f32 example, lowering: aten.scatter_add.default at m.py:18 "
                "`cells.scatter_add_(0, idx, x)`")
    head, [cells] = columns([row], links=False)
    assert cells[head.index("culprit")] == expected
    assert cells[head.index("OpenVINO")] == "mismatch"
    assert row["error"] == f"divergence: {expected}"


def test_a_run_ended_by_a_signal_has_no_exit_status_and_says_which(tmp_path):
    job = Job("m.py", Path("m.py"), "m")
    row = make_row(job, {"exit": -9, "seconds": 3.0, "timed_out": False}, tmp_path, "f")
    assert (row["exit"], row["report"]) == (None, None)
    assert row["error"] == "the dynexport process was ended by SIGKILL (out of memory?)"


# --- the regression view ----------------------------------------------------------------------

def _row(name, exit_status, openvino, hazards=(), culprit=None, seconds=10.0):
    stage = {"stage": "ok", "rows": 2, "errors": [], "verified": openvino == "pass",
             "max_abs": 1e-6}
    return {"script": f"{name}.py", "name": name, "exit": exit_status, "timed_out": False,
            "seconds": seconds, "strategy": "strict", "hazards": list(hazards),
            "unsupported_ops": [], "onnx": {**stage, "verified": True}, "openvino": stage,
            "culprit": culprit}


def test_compare_lists_what_got_better_worse_or_changed():
    culprit = {"runtime": "openvino", "precision": "f32", "inputs": "probe",
               "cause": "lowering", "op": "aten.mm.default", "file": None, "line": None,
               "code": None}
    old = [_row("a", 1, "mismatch"), _row("b", 0, "pass", seconds=10.0),
           _row("gone", 0, "pass")]
    new = [_row("a", 0, "pass"),
           _row("b", 1, "mismatch", hazards=["error tensor_to_python at m.py:3"],
                culprit=culprit, seconds=40.0),
           _row("added", 0, "pass")]
    new[0]["openvino"]["max_abs"] = 9e-6  # a number inside `pass (...)` is not a change
    changes = {(c["script"], c["what"]): (c["old"], c["new"], c["change"])
               for c in compare(old, new)}
    assert changes == {
        ("a.py", "exit"): ("1", "0", "better"),
        ("a.py", "dynexport OpenVINO"): ("mismatch", "pass (9.0e-06)", "better"),
        ("b.py", "exit"): ("0", "1", "worse"),
        ("b.py", "dynexport OpenVINO"): ("pass (1.0e-06)", "mismatch", "worse"),
        ("b.py", "hazards"): ("none", "error tensor_to_python at m.py:3", "worse"),
        ("b.py", "culprit"): ("-", "openvino f32 probe, lowering: aten.mm.default", "worse"),
        ("b.py", "seconds"): (10.0, 40.0, "slower"),
        ("added.py", "script"): ("-", "0", "new"),
        ("gone.py", "script"): ("0", "-", "removed")}


# --- processes --------------------------------------------------------------------------------

def test_a_run_past_its_timeout_is_ended_with_the_processes_it_started(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    program = ("import subprocess, sys, time\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
               f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
               "time.sleep(600)\n")
    start = time.perf_counter()
    code, seconds = run_process([sys.executable, "-c", program], tmp_path / "log", timeout=3)
    assert code is None and 3 <= seconds < 30 and time.perf_counter() - start < 30
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reaped by init shortly after the kill
        if not Path(f"/proc/{grandchild}").exists() or \
                Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the grandchild {grandchild} outlived the timeout")


def _sweep(*args: str) -> int:
    return main(["sweep", *map(str, args)])


@pytest.mark.slow
def test_the_command_times_out_a_hung_script_and_reruns_only_what_changed(tmp_path, capsys):
    """Runs `python -m dynexport` twice or thrice on scripts that fail while loading (no
    conversion): the sleeping script ends at --timeout, the unusable one exits 2."""
    zoo = tmp_path / "zoo"
    for name in ("sleeps.py", "no_model.py"):
        write(zoo / name, (FIXTURES / name).read_text())
    # Each its own timeout: the unusable script's run has time to import dynexport on a busy
    # machine, the sleeping one is ended soon.
    listing = write(zoo / "zoo.toml", '[[scripts]]\npath = "no_model.py"\ntimeout = 600\n'
                                      '[[scripts]]\npath = "sleeps.py"\ntimeout = 5\n')
    out = tmp_path / "sweep"
    assert _sweep(listing, "--jobs", 2, "--out", out) == 1
    first = json.loads((out / "sweep.json").read_text())
    assert first["schema"] == SCHEMA
    rows = {r["name"]: r for r in first["rows"]}
    assert [r["script"] for r in first["rows"]] == ["no_model.py", "sleeps.py"]
    assert (rows["sleeps"]["exit"], rows["sleeps"]["report"], rows["sleeps"]["timed_out"]) \
        == (None, None, True)
    assert rows["sleeps"]["error"].startswith("timed out: still running after 5 s")
    assert 5 <= rows["sleeps"]["seconds"] < 60
    assert (rows["no_model"]["exit"], rows["no_model"]["report"]) == (
        2, "no_model/dynexport/report.json")
    assert "get_model" in (out / "no_model" / "dynexport.log").read_text()
    assert "| timeout |" in (out / "sweep.md").read_text()
    assert "sleeps.py" in (out / "sweep.html").read_text()

    # Unchanged: the unusable script's row is kept; the timed-out one (no verdict) runs again.
    log = out / "no_model" / "dynexport.log"
    written = log.stat().st_mtime_ns
    assert _sweep(listing, "--out", out, "--compare", out / "sweep.json") == 1
    second = {r["name"]: r for r in json.loads((out / "sweep.json").read_text())["rows"]}
    assert second["no_model"]["reused"] and log.stat().st_mtime_ns == written
    assert not second["sleeps"]["reused"]
    assert "Compared with" in (out / "sweep.md").read_text()

    # The script changed: it runs again.
    (zoo / "no_model.py").write_text((FIXTURES / "no_model.py").read_text() + "# edited\n")
    assert _sweep(listing, "--out", out) == 1
    third = json.loads((out / "sweep.json").read_text())["rows"]
    assert not third[0]["reused"] and third[0]["exit"] == 2 and log.stat().st_mtime_ns != written
    capsys.readouterr()


def test_unusable_sweep_commands_exit_2_with_a_paragraph(tmp_path, capsys):
    script = write(tmp_path / "m.py", "")
    assert _sweep(tmp_path / "nothing") == 2
    assert _sweep(script, "--", "--out", tmp_path) == 2
    assert _sweep(script, "--", "--precisoin", "bf16") == 2
    assert _sweep(script, "--compare", write(tmp_path / "old.json", '{"schema": "x"}')) == 2
    assert _sweep(script, "--jobs", 0) == 2
    err = capsys.readouterr().err
    for fragment in ("is not a script", "the sweep sets --out", "--precisoin",
                     "is not a sweep.json", "--jobs 0"):
        assert fragment in err


def test_python_m_dynexport_sweep_is_the_subcommand(capsys):
    with pytest.raises(SystemExit) as done:
        main(["sweep", "--help"])
    assert done.value.code == 0
    assert "--jobs" in capsys.readouterr().out
