"""The notebooks run top to bottom, so they never rot."""

from pathlib import Path

import nbclient
import nbformat
import pytest

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _execute(name: str) -> tuple[nbformat.NotebookNode, str]:
    """Run notebooks/`name` in its folder; the notebook with its outputs, and what it printed."""
    path = NOTEBOOKS / name
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells
                      if cell.cell_type == "code" for output in cell.outputs)
    return notebook, printed


def test_investigation_notebook_executes():
    _, printed = _execute("investigate_graph_breaks.ipynb")
    assert "onnxruntime agrees: True" in printed and "OpenVINO agrees:    True" in printed


def test_pictures_notebook_shows_a_picture_per_runtime():
    """FlashOcc small with validation data (about 40 s): one PNG shown inline per accuracy row,
    the f32 runtimes drawing eager's picture pixel for pixel, report.md linking the files."""
    notebook, printed = _execute("flashocc_pictures.ipynb")
    shown = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs if "image/png" in output.get("data", {})]
    assert "ok: True" in printed
    assert len(shown) == 3
    for runtime in ("eager", "onnxruntime", "openvino"):
        assert f"{runtime} f32: 0 pixels differ from eager f32" in printed
        assert f"![{runtime} f32](pictures/{runtime}-f32.png)" in printed
