"""index_add → scatter_add: exact in onnxruntime with several threads, converts in OpenVINO."""

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch

import dynexport
from dynexport.decompositions.scatter import index_add


class Accumulate(torch.nn.Module):
    def forward(self, grid, rows, values):
        return grid.index_add(0, rows, values, alpha=0.5)


def _example(points: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 50, (points,), generator=generator)  # many duplicates
    values = torch.randn(points, 16, generator=generator)
    return torch.zeros(50, 16), rows, values


def _reference(grid, rows, values):
    out = grid.numpy().astype(np.float64).copy()
    np.add.at(out, rows.numpy(), 0.5 * values.numpy().astype(np.float64))
    return out


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_decomposition_matches_index_add(dim):
    self = torch.randn(6, 7)
    index = torch.tensor([0, 2, 2, 1])
    source = torch.randn(4, 7) if dim == 0 else torch.randn(6, 4)
    torch.testing.assert_close(index_add(self, dim, index, source, alpha=2.0),
                               self.index_add(dim, index, source, alpha=2.0))


def test_index_add_converts_and_stays_exact_with_threads(tmp_path):
    points = torch.export.Dim("points", min=2, max=100_000)
    program = dynexport.export(Accumulate(), _example(20_000, 0),
                               dynamic_shapes=(None, {0: points}, {0: points}))
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.index_add.default not in targets
    path = dynexport.to_onnx(program, tmp_path / "acc.onnx")
    compiled = ov.Core().compile_model(dynexport.to_openvino(program), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    probe = _example(30_000, 1)  # another M than the export example
    expected = _reference(*probe)
    feeds = [t.numpy() for t in probe]
    for threads in (1, 2, 4):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        for _ in range(3):
            got = session.run(None, dict(zip(names, feeds, strict=True)))[0]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(compiled(feeds)[0], expected, rtol=1e-4, atol=1e-3)
