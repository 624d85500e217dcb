"""avg_pool2d whose window covers the whole input (transformers' EfficientNet): OpenVINO
rejects the kernel, so dynexport pools it as a spatial mean; ordinary pools are kept."""

import numpy as np
import openvino as ov
import pytest
import torch

import dynexport
from dynexport.runtimes import OnnxRuntimeRunner


class Pool(torch.nn.Module):
    def __init__(self, kernel: int, **options):
        super().__init__()
        self.pool = torch.nn.AvgPool2d(kernel, **options)

    def forward(self, x):
        return self.pool(x) * 2


def _ops(program) -> set[str]:
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("kernel, size", [(320, (2, 2)), (7, (5, 3)), (4, (4, 4))])
def test_a_window_over_the_whole_map_is_a_mean_in_both_runtimes(kernel, size, tmp_path):
    x = torch.randn(2, 8, *size, generator=torch.Generator().manual_seed(0))
    model = Pool(kernel, ceil_mode=True)
    program = dynexport.export(model, (x,))
    assert "aten.avg_pool2d.default" not in _ops(program)
    expected = x.numpy().mean(axis=(2, 3), keepdims=True) * 2  # independent reference
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    compiled = ov.Core().compile_model(dynexport.to_openvino(program), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled([x.numpy()])[compiled.outputs[0]], expected,
                               rtol=1e-5, atol=1e-6)
    runner = OnnxRuntimeRunner(dynexport.to_onnx(program, tmp_path / "model.onnx"), 1)
    np.testing.assert_allclose(runner.run([x.numpy()])[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel, options, size", [
    (2, {}, (4, 4)),  # an ordinary pool
    (3, {"ceil_mode": True, "stride": 1}, (4, 4)),  # several windows
    (5, {"ceil_mode": True, "padding": 2}, (4, 4)),  # padded: the divisor counts padding
])
def test_other_pools_are_kept(kernel, options, size):
    x = torch.randn(1, 2, *size)
    assert "aten.avg_pool2d.default" in _ops(dynexport.export(Pool(kernel, **options), (x,)))
