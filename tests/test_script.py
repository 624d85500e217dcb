import sys

import pytest
import torch

from dynexport.script import ScriptError, load_script

GOOD = """
import sys
import torch

def get_model():
    return torch.nn.Linear(4, 2)

def get_inputs():
    return (torch.ones(1, 4),)

ARGV = list(sys.argv[1:])
"""


def test_loads_model_inputs_and_generated_probe(write_script):
    script = load_script(write_script(GOOD))
    assert isinstance(script.model, torch.nn.Linear)
    assert script.example.args[0].shape == (1, 4)
    assert not torch.equal(script.probe.args[0], script.example.args[0])


def test_script_arguments_become_its_argv_and_argv_is_restored(write_script):
    before = list(sys.argv)
    path = write_script(GOOD)
    load_script(path, ["--config", "tiny"])
    assert sys.modules["_dynexport_script_model"].ARGV == ["--config", "tiny"]
    assert sys.argv == before


def test_module_next_to_the_script_is_importable(write_script):
    write_script("SIZE = 3\n", name="helper_module_xyz.py")
    script = load_script(write_script(
        "import torch, helper_module_xyz\n"
        "def get_model(): return torch.nn.Linear(helper_module_xyz.SIZE, 1)\n"
        "def get_inputs(): return (torch.ones(1, 3),)\n"))
    assert script.model.in_features == 3


@pytest.mark.parametrize("source, expected", [
    ("def get_model(:\n", "syntax error at line 1"),
    ("import torch\ndef get_inputs(): return (torch.ones(1),)\n", "no `get_model()`"),
    ("import torch\ndef get_model(): return 3\ndef get_inputs(): return (torch.ones(1),)\n",
     "not a torch.nn.Module"),
    ("import torch\ndef get_model(): return torch.nn.ReLU()\n", "no `get_inputs()`"),
    ("import torch\ndef get_model(): return torch.nn.ReLU()\ndef get_inputs(): return 'img'\n",
     "not a model input"),
    ("import torch\ndef get_model(): raise ValueError('no weights')\n"
     "def get_inputs(): return (torch.ones(1),)\n", "ValueError: no weights"),
    ("raise ImportError('mmcv._ext')\n", "Importing the script"),
    ("import torch\nmethod = 'predict'\ndef get_model(): return torch.nn.ReLU()\n"
     "def get_inputs(): return (torch.ones(1),)\n", "does not name a method"),
    ("import torch\ndef get_model(): return torch.nn.ReLU()\n"
     "def get_inputs(): return (torch.ones(1),)\n"
     "def get_probe_inputs(): return {'x': torch.ones(1)}\n", "different structure"),
])
def test_unusable_scripts_explain_themselves(write_script, source, expected):
    with pytest.raises(ScriptError, match=expected.replace("(", r"\(").replace(")", r"\)")) \
            as info:
        load_script(write_script(source))
    assert "\n" not in str(info.value)  # one paragraph


def test_missing_and_non_python_files(tmp_path):
    with pytest.raises(ScriptError, match="does not exist"):
        load_script(tmp_path / "nope.py")
    (tmp_path / "model.txt").write_text("")
    with pytest.raises(ScriptError, match="not a Python file"):
        load_script(tmp_path / "model.txt")
