"""The library API of contract §5, and the plain library calls it promises to feed."""

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch

import dynexport
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG


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

