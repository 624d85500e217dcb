"""index_put with slices before or between its index tensors (`canvas[:, ys, xs] = v`, a lidar
scatter into a (C, H, W) grid): OpenVINO's frontend fails on the write as captured
(AtenIndexPutReplacer, OpenVINO 2026.4); the decomposition makes it one flat index, checked
against numpy's indexing, which places the index dims by the same rule as torch."""

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch

import dynexport
from dynexport.backends.onnx_races import racy_nodes
from dynexport.decompositions.scatter import index_put

# (shape of self, which dims are indexed): slices before, between and after index tensors
PATTERNS = {
    "[:, ys, xs]": ((4, 5, 6), (1, 2)),
    "[ys, :, xs]": ((5, 4, 6), (0, 2)),
    "[:, :, ys, xs]": ((2, 4, 5, 6), (2, 3)),
    "[:, ys, :, xs]": ((2, 5, 4, 6), (1, 3)),
    "[ys, xs, :, zs]": ((5, 6, 4, 3), (0, 1, 3)),
    "[:, ys] (sum)": ((4, 5, 3), (1,)),
}


def _case(pattern: str, seed: int, distinct: bool):
    """self, the index list (None for a slice), numpy's index tuple, values."""
    shape, dims = PATTERNS[pattern]
    g = torch.Generator().manual_seed(seed)
    count = 4
    if distinct:  # a write with repeated positions keeps an unspecified one of them
        flat = torch.randperm(int(np.prod([shape[d] for d in dims])), generator=g)[:count]
        positions = np.unravel_index(flat.numpy(), [shape[d] for d in dims])
        index = {d: torch.from_numpy(p.astype(np.int64))
                 for d, p in zip(dims, positions, strict=True)}
    else:
        index = {d: torch.randint(0, shape[d], (count,), generator=g) for d in dims}
    indices = [index.get(d) for d in range(max(dims) + 1)]
    numpy_index = tuple(slice(None) if i is None else i.numpy() for i in indices)
    self = torch.randn(shape, generator=g)
    values = torch.randn(self.numpy()[numpy_index].shape, generator=g)
    return self, indices, numpy_index, values


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_write_matches_numpys_indexing(pattern):
    self, indices, numpy_index, values = _case(pattern, seed=0, distinct=True)
    expected = self.numpy().copy()
    expected[numpy_index] = values.numpy()
    result = index_put(self, indices, values, False)
    if pattern == "[:, ys] (sum)":  # one index after a slice: both backends convert it as it is
        assert result is NotImplemented
        return
    np.testing.assert_array_equal(result.numpy(), expected)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_sum_matches_numpys_add_at(pattern):
    self, indices, numpy_index, values = _case(pattern, seed=1, distinct=False)
    expected = self.double().numpy()
    np.add.at(expected, numpy_index, values.double().numpy())
    np.testing.assert_allclose(index_put(self, indices, values, True).numpy(), expected,
                               rtol=1e-6, atol=1e-6)


class Canvas(torch.nn.Module):
    """A pillar scatter as lidar detectors write it: features (C, N) into a (C, H, W) grid at
    (ys, xs); and every position summed twice (`index_put_` with a slice, as `torch.ops.aten`
    spells it: the Python API takes no None among the indices)."""

    def forward(self, features, ys, xs):
        canvas = features.new_zeros(features.shape[0], 12, 16)
        canvas[:, ys, xs] = features
        summed = features.new_zeros(features.shape[0], 12, 16)
        torch.ops.aten.index_put_(summed, [None, ys.repeat(2), xs.repeat(2)],
                                  features.repeat(1, 2), True)
        return canvas, summed


def _pillars(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` distinct cells (a write to a repeated cell keeps an unspecified value)."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(12 * 16, generator=g)[:count]
    return torch.randn(8, count, generator=g), cells // 16, cells % 16


def _reference(features: np.ndarray, ys: np.ndarray, xs: np.ndarray):
    canvas = np.zeros((features.shape[0], 12, 16))
    canvas[:, ys, xs] = features
    summed = np.zeros((features.shape[0], 12, 16))
    np.add.at(summed, (slice(None), np.tile(ys, 2), np.tile(xs, 2)),
              np.tile(features, 2).astype(np.float64))
    return canvas, summed


@pytest.mark.slow  # converts through both exporters
def test_the_pillar_scatter_converts_and_is_exact_in_both_runtimes(tmp_path):
    pillars = torch.export.Dim("pillars", min=2, max=192)
    program = dynexport.export(Canvas(), _pillars(40, seed=0),
                               dynamic_shapes=({1: pillars}, {0: pillars}, {0: pillars}))
    path = dynexport.to_onnx(program, tmp_path / "canvas.onnx")
    assert racy_nodes(path) == []
    compiled = ov.Core().compile_model(dynexport.to_openvino(program), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    features, ys, xs = (t.numpy() for t in _pillars(150, seed=1))  # not the export's count
    feeds = {"features": features, "ys": ys, "xs": xs}
    expected = _reference(features, ys, xs)
    runs = [compiled([features, ys, xs])]
    for threads in (1, 4):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        runs.append(session.run(None, feeds))
    for canvas, summed in ((run[0], run[1]) for run in runs):
        np.testing.assert_array_equal(canvas, expected[0])
        np.testing.assert_allclose(summed, expected[1], rtol=1e-6, atol=1e-6)
