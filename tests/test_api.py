"""The library API of contract §5, and the plain library calls it promises to feed."""

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch

import dynexport
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, images, *, scale):
        return {"features": self.conv(images).relu() * scale}


def _run_onnx(path, *tensors):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, [t.numpy() for t in tensors], strict=True)))[0]


def _example():
    return (torch.randn(2, 3, 8, 8),), {"scale": torch.tensor(0.5)}


def test_export_returns_an_exported_program_that_runs():
    args, kwargs = _example()
    program = dynexport.export(Net().eval(), args, kwargs)
    assert isinstance(program, torch.export.ExportedProgram)


def test_to_onnx_and_to_openvino_match_eager(tmp_path):
    model = Net().eval()
    args, kwargs = _example()
    expected = model(*args, **kwargs)["features"].detach().numpy()
    program = dynexport.export(model, args, kwargs)
    path = dynexport.to_onnx(program, tmp_path / "net.onnx")
    np.testing.assert_allclose(_run_onnx(path, args[0], kwargs["scale"]), expected,
                               rtol=1e-4, atol=1e-5)
    compiled = ov.Core().compile_model(dynexport.to_openvino(program), "CPU",
                                       DEFAULT_OPENVINO_CONFIG)
    got = compiled([args[0].numpy(), kwargs["scale"].numpy()])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_plain_library_calls_accept_the_program(tmp_path):
    model = Net().eval()
    args, kwargs = _example()
    expected = model(*args, **kwargs)["features"].detach().numpy()
    program = dynexport.export(model, args, kwargs)
    compiled = ov.Core().compile_model(ov.convert_model(program), "CPU", DEFAULT_OPENVINO_CONFIG)
    np.testing.assert_allclose(compiled([args[0].numpy(), kwargs["scale"].numpy()])[0],
                               expected, rtol=1e-4, atol=1e-5)
    onnx_program = torch.onnx.export(program, dynamo=True)
    onnx_program.save(tmp_path / "plain.onnx")
    np.testing.assert_allclose(_run_onnx(tmp_path / "plain.onnx", args[0], kwargs["scale"]),
                               expected, rtol=1e-4, atol=1e-5)


def test_onnx_then_openvino_on_a_program_with_unbacked_symbols(tmp_path):
    """torch.onnx's re-trace used to leave pending symbols that broke OpenVINO's."""

    class Counts(torch.nn.Module):
        def forward(self, x):
            return x * int((x > 0).sum())

    x = torch.randn(4, 3)
    program = dynexport.export(Counts(), (x,))
    dynexport.to_onnx(program, tmp_path / "counts.onnx")
    compiled = ov.Core().compile_model(dynexport.to_openvino(program), "CPU",
                                       DEFAULT_OPENVINO_CONFIG)
    np.testing.assert_allclose(compiled([x.numpy()])[0], (x * int((x > 0).sum())).numpy(),
                               rtol=1e-5)



class _Outputs(torch.nn.Module):
    def forward(self, x):
        return {"boxes": x * 2, "extra": (x.sum(-1), x.argmax(-1))}


class _Clash(torch.nn.Module):
    def forward(self, x):
        return {"x": x + 1}


def _output_names(program, tmp_path):
    onnx_path = dynexport.to_onnx(program, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return ([o.name for o in session.get_outputs()],
            [o.get_any_name() for o in dynexport.to_openvino(program).outputs])


def test_converted_outputs_carry_the_programs_names(tmp_path):
    """What the report's verification table calls them, not the graph's node names."""
    program = dynexport.export(_Outputs(), (torch.randn(2, 3),))
    onnx_names, openvino_names = _output_names(program, tmp_path)
    assert onnx_names == openvino_names == ["boxes", "extra.0", "extra.1"]
    single = dynexport.export(torch.nn.ReLU(), (torch.randn(2, 3),))
    assert _output_names(single, tmp_path / "single") == (["output"], ["output"])


def test_an_output_named_like_an_input_keeps_the_converters_name(tmp_path):
    program = dynexport.export(_Clash(), (torch.randn(2, 3),))
    onnx_names, openvino_names = _output_names(program, tmp_path)
    assert "x" not in onnx_names and "x" not in openvino_names
    assert len(onnx_names) == len(openvino_names) == 1
