"""The command of contract §1 on real scripts: exit statuses, artifacts, report.json."""

import os
import subprocess
import sys

import pytest
from helpers import REPO, read_report

BAKED = """
import torch

class BakesItsBranch(torch.nn.Module):
    def forward(self, x):
        if x.sum().item() > 0:  # decided once, on the example
            return x * 2
        return -x

def get_model():
    return BakesItsBranch()

def get_inputs():
    return (torch.ones(4, 3),)

def get_probe_inputs():
    return (-torch.ones(4, 3),)
"""


def test_small_example_converts_and_verifies(cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, REPO / "examples" / "convnet.py")
    assert code == 0, stdout
    report = read_report(out)
    assert report["ok"] and report["capture"]["strategy"] == "strict"
    assert [s["status"] for s in report["stages"]] == ["ok"] * 7
    assert (out / "exported.pt2").is_file() and (out / "model.onnx").is_file()
    assert (out / "openvino" / "model.xml").is_file() and (out / "openvino" / "model.bin").is_file()
    assert (out / "report.md").read_text().startswith("# dynexport report")
    checked = {(v["runtime"], v["inputs"]) for v in report["verification"]}
    assert checked == {(r, i) for r in ("onnxruntime", "openvino") for i in ("example", "probe")}
    assert all(v["passed"] for v in report["verification"])
    assert "Verification" in stdout


def test_kwargs_model_exports_without_a_wrapper(cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, REPO / "examples" / "mmdet_style.py")
    assert code == 0, stdout
    report = read_report(out)
    assert {v["output"] for v in report["verification"]} == {"boxes", "scores"}


def test_value_baked_by_item_is_caught_on_the_probe(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, write_script(BAKED))
    assert code == 1
    report = read_report(out)
    assert report["capture"]["strategy"] == "draft"
    assert all(v["passed"] for v in report["verification"] if v["inputs"] == "example")
    assert not all(v["passed"] for v in report["verification"] if v["inputs"] == "probe")
    baked = [h for h in report["hazards"] if h["category"] == "baked_constant"]
    assert baked and baked[0]["severity"] == "error" and baked[0]["fix"]
    assert not report["ok"]


def test_targets_and_no_verify(cli, tmp_path):
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, "--to", "onnx", "--no-verify", REPO / "examples" / "convnet.py")
    assert code == 0
    report = read_report(out)
    assert [s["name"] for s in report["stages"]] == ["load", "eager", "capture", "decompose",
                                                     "onnx", "verify"]
    assert report["stages"][-1]["status"] == "skipped"
    assert not (out / "openvino").exists() and report["verification"] == []


def test_bench_fills_the_benchmark_section(cli, tmp_path):
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, "--bench", REPO / "examples" / "convnet.py")
    assert code == 0
    runtimes = [b["runtime"] for b in read_report(out)["benchmark"]]
    assert runtimes == ["eager", "onnxruntime", "openvino"]


def _raises(program):
    raise RuntimeError("injected OpenVINO failure")


def _aborts(program):  # what OpenVINO did natively on fasterrcnn_mobilenet_v3_large_320_fpn
    os.abort()


@pytest.mark.parametrize("failure, said", [(_raises, "injected OpenVINO failure"),
                                           (_aborts, "SIGABRT")], ids=["raises", "aborts"])
def test_failed_openvino_stage_keeps_onnx_and_report(cli, tmp_path, monkeypatch, failure, said):
    import dynexport.conversion

    monkeypatch.setattr(dynexport.conversion, "to_openvino", failure)
    out = tmp_path / "out"
    code, _, _ = cli("--out", out, REPO / "examples" / "convnet.py")
    assert code == 1
    report = read_report(out)
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["openvino"]["status"] == "failed"
    assert said in stages["openvino"]["error"]
    assert stages["onnx"]["status"] == "ok" and (out / "model.onnx").is_file()
    assert stages["verify"]["status"] == "ok"  # onnxruntime was still verified
    assert {v["runtime"] for v in report["verification"]} == {"onnxruntime"}


def test_capture_failure_is_a_failed_stage(cli, write_script, tmp_path):
    script = write_script("""
        import torch
        class Broken(torch.nn.Module):
            def forward(self, x):
                raise RuntimeError("cannot run")
        def get_model(): return Broken()
        def get_inputs(): return (torch.ones(1),)
    """)
    out = tmp_path / "out"
    assert cli("--out", out, script)[0] == 1
    report = read_report(out)
    assert report["stages"][2]["status"] == "failed" and report["capture"]["strategy"] is None
    assert {s["status"] for s in report["stages"][3:]} == {"skipped"}


@pytest.mark.parametrize("arguments, expected", [
    (["missing.py"], "does not exist"),
    (["--frobnicate", "x.py"], "unrecognized arguments"),
    (["--to", "tensorrt", "x.py"], "unknown targets"),
])
def test_unusable_command_exits_2(cli, tmp_path, monkeypatch, arguments, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.py").write_text("")
    code, stdout, stderr = cli(*arguments)
    assert code == 2
    assert expected in stderr and "Traceback" not in stderr + stdout


def test_out_that_is_a_file_exits_2(cli, tmp_path):
    (tmp_path / "taken").write_text("")
    code, _, stderr = cli("--out", tmp_path / "taken", REPO / "examples" / "convnet.py")
    assert code == 2 and "is an existing file" in stderr


@pytest.mark.parametrize("source, expected", [
    ("def get_model(:\n", "syntax error"),
    ("import torch\ndef get_inputs(): return (torch.ones(1),)\n", "no `get_model()`"),
    ("import torch\ndef get_model(): return torch.nn.ReLU()\ndef get_inputs(): return 7\n",
     "not a model input"),
])
def test_unusable_script_exits_2_and_still_writes_the_report(cli, write_script, tmp_path,
                                                             source, expected):
    out = tmp_path / "out"
    code, _, stderr = cli("--out", out, write_script(source))
    assert code == 2 and expected in stderr and "Traceback" not in stderr
    report = read_report(out)
    assert report["stages"] == [{"name": "load", "status": "failed", "seconds": pytest.approx(
        report["stages"][0]["seconds"]), "artifact": None, "error": "the script is unusable"}]


def test_module_entry_point_end_to_end(tmp_path):
    """`python -m dynexport` in a fresh process, as README runs it."""
    missing = subprocess.run([sys.executable, "-m", "dynexport", str(tmp_path / "nope.py")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    debug = subprocess.run([sys.executable, "-m", "dynexport", "--debug",
                            str(tmp_path / "nope.py")], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


UNSUPPORTED = """
import torch

class SpecialFunctions(torch.nn.Module):
    def forward(self, x):
        bins = torch.histc(x, bins=4)  # histc
        return torch.digamma(x), bins  # digamma

def get_model():
    return SpecialFunctions()

def get_inputs():
    return (torch.rand(8) + 1,)
"""


def test_ops_a_backend_cannot_lower_are_named_at_their_lines(cli, write_script, tmp_path):
    script = write_script(UNSUPPORTED)
    out = tmp_path / "out"
    assert cli("--out", out, script)[0] == 1
    report = read_report(out)
    lines = {text: i for i, line in enumerate(UNSUPPORTED.splitlines(), 1)
             for text in ("# histc", "# digamma") if text in line}
    records = {(u["backend"], u["op"], u["line"]) for u in report["unsupported_ops"]}
    assert ("openvino", "aten.histc.default", lines["# histc"]) in records
    assert ("openvino", "aten.digamma.default", lines["# digamma"]) in records
    assert any(b == "onnx" and "digamma" in op and line == lines["# digamma"]
               for b, op, line in records)
    hazards = {(h["category"], h["line"]) for h in report["hazards"]}
    assert ("unsupported_op", lines["# histc"]) in hazards
    stages = {s["name"]: s for s in report["stages"]}
    assert "cannot lower" in stages["openvino"]["error"] and "\x1b[" not in stages["onnx"]["error"]


def test_ops_subcommand_prints_coverage_without_converting(cli, write_script, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = cli("ops", write_script(UNSUPPORTED))
    assert code == 1
    assert "aten.histc.default" in stdout and "aten.digamma.default" in stdout
    assert not (tmp_path / "dynexport_out").exists()
    assert cli("ops", REPO / "examples" / "convnet.py")[0] == 0
