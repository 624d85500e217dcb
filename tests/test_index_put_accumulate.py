"""index_put(accumulate=True) → scatter_add: BEV pooling with a dynamic number of points, many
per cell, exact in onnxruntime at 1-8 threads and in OpenVINO, against numpy's np.add.at."""

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from helpers import read_report

import dynexport
from dynexport.backends.onnx_races import racy_nodes
from dynexport.decompositions.scatter import index_put, index_put_

CELLS = 8  # per side: 64 cells


class BevPool(torch.nn.Module):
    """Points at float (x, y) in [0, 8)² summed into their cell of a flat 64-cell grid."""

    def forward(self, xy, feats):
        cell = (xy[:, 0].floor() * CELLS + xy[:, 1].floor()).long()
        bev = feats.new_zeros(CELLS * CELLS, feats.shape[1])
        bev.index_put_((cell,), feats, accumulate=True)
        return bev


class BevPoolTwoIndices(torch.nn.Module):
    """The same into an 8 x 8 grid indexed by (row, column): two index tensors."""

    def forward(self, xy, feats):
        rows, columns = xy.floor().long().unbind(1)
        bev = feats.new_zeros(CELLS, CELLS, feats.shape[1])
        return bev.index_put((rows, columns), feats, accumulate=True)


def _points(count: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 2, generator=generator) * CELLS,
            torch.randn(count, channels, generator=generator))


def _reference(model: torch.nn.Module, xy: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """np.add.at in float64, the cells computed in numpy."""
    rows, columns = np.floor(xy).astype(np.int64).T
    out = np.zeros((CELLS, CELLS, feats.shape[1]))
    np.add.at(out, (rows, columns), feats.astype(np.float64))
    return out.reshape(-1, feats.shape[1]) if isinstance(model, BevPool) else out


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


def _export(model: torch.nn.Module, channels: int):
    points = torch.export.Dim("points", min=2, max=1_000_000)
    return dynexport.export(model, _points(2000, channels, seed=0),
                            dynamic_shapes=({0: points}, {0: points}))


def _onnxruntime_runs(path, feeds: dict, threads: int, repeats: int) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, feeds)[0] for _ in range(repeats)]


# --- eager: the decomposition against np.add.at --------------------------------------------------

def _add_at(self: torch.Tensor, indices, values: torch.Tensor) -> np.ndarray:
    out = self.double().numpy().copy()
    broadcast = np.broadcast_arrays(*[i.numpy() for i in indices])
    target_shape = broadcast[0].shape + self.shape[len(indices):]
    np.add.at(out, tuple(broadcast), np.broadcast_to(values.double().numpy(), target_shape))
    return out


@pytest.mark.parametrize("case", ["one index", "two indices", "negative", "int32",
                                  "broadcast indices", "broadcast values", "1-D"])
def test_decomposition_matches_add_at(case):
    g = torch.Generator().manual_seed(0)
    self = torch.randn(5, 6, 3, generator=g)
    rows = torch.randint(0, 5, (40,), generator=g)
    columns = torch.randint(0, 6, (40,), generator=g)
    indices, values = {
        "one index": ([rows], torch.randn(40, 6, 3, generator=g)),
        "two indices": ([rows, columns], torch.randn(40, 3, generator=g)),
        "negative": ([rows - 5, -1 - columns], torch.randn(40, 3, generator=g)),
        "int32": ([rows.int(), columns.int()], torch.randn(40, 3, generator=g)),
        "broadcast indices": ([rows[:7, None], columns[None, :4]],
                              torch.randn(7, 4, 3, generator=g)),
        "broadcast values": ([rows, columns], torch.randn(3, generator=g)),
        "1-D": ([rows], torch.randn(40, generator=g)),
    }[case]
    if case == "1-D":
        self = torch.randn(5, generator=g)
    np.testing.assert_allclose(index_put(self, indices, values, True).numpy(),
                               _add_at(self, indices, values), rtol=1e-6, atol=1e-6)
    inplace = self.clone()
    assert index_put_(inplace, indices, values, True) is inplace
    np.testing.assert_allclose(inplace.numpy(), _add_at(self, indices, values), rtol=1e-6,
                               atol=1e-6)


def test_what_the_decomposition_declines():
    self, values = torch.zeros(5, 3), torch.ones(2, 3)
    rows = torch.tensor([1, 1])
    assert index_put(self, [rows], values, False) is NotImplemented  # a write, not a sum
    assert index_put(self, [torch.tensor([True, False, True, False, False])], values,
                     True) is NotImplemented
    assert index_put(torch.zeros(4, 5, 3), [rows, torch.tensor([0, 2])], values,
                     False) is NotImplemented  # adjacent leading indices: converted as captured
    assert index_put(self, [None, torch.tensor([0, 2])], torch.ones(5, 2),
                     False) is NotImplemented  # one index after a slice: converted as captured
    assert index_put_(self, [rows], values, False) is NotImplemented


def test_only_the_accumulating_index_put_is_replaced():
    class Both(torch.nn.Module):
        def forward(self, cells, feats):
            summed = feats.new_zeros(16, 4).index_put((cells,), feats, accumulate=True)
            written = feats.new_zeros(16, 4).index_put((cells,), feats)
            masked = feats.new_zeros(16, 4).index_put((cells > 3,), feats[0],
                                                      accumulate=True)
            return summed, written, masked

    program = dynexport.export(Both(), (torch.arange(16) % 5, torch.randn(16, 4)))
    calls = [n.args for n in program.graph.nodes if n.target is torch.ops.aten.index_put.default]
    accumulates = sorted(len(args) > 3 and args[3] for args in calls)
    assert accumulates == [False, True]  # the write and the mask stay; the sum is gone


# --- converted: onnxruntime at several threads, OpenVINO -----------------------------------------

@pytest.mark.slow  # converts through both exporters
@pytest.mark.parametrize("model, points, channels", [
    (BevPool(), 2000, 8),
    # large enough for onnxruntime to split ScatterElements over its threads
    (BevPool(), 100_000, 64),
    (BevPoolTwoIndices(), 3000, 8),
], ids=["bev", "bev-large", "two-indices"])
def test_exact_in_onnxruntime_at_every_thread_count_and_in_openvino(tmp_path, model, points,
                                                                    channels):
    program = _export(model, channels)
    path = dynexport.to_onnx(program, tmp_path / "bev.onnx")
    assert racy_nodes(path) == []
    compiled = ov.Core().compile_model(dynexport.to_openvino(program), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    xy, feats = (t.numpy() for t in _points(points, channels, seed=1))  # not the export's M
    expected = _reference(model, xy, feats)
    feeds = {"xy": xy, "feats": feats}
    runs = [run for threads in (1, 2, 4, 8)
            for run in _onnxruntime_runs(path, feeds, threads, repeats=4)]
    for run in runs:
        _assert_close(run, expected)
        np.testing.assert_array_equal(run, runs[0])  # deterministic, to the bit
    for _ in range(2):
        _assert_close(compiled([xy, feats])[0], expected)


@pytest.mark.slow  # converts through torch.onnx
def test_without_the_decomposition_onnx_gets_a_racing_scatternd(tmp_path):
    points = torch.export.Dim("points", min=2, max=1_000_000)
    plain = torch.export.export(BevPool(), _points(2000, 8, seed=0),
                                dynamic_shapes=({0: points}, {0: points}))
    path = tmp_path / "plain.onnx"
    torch.onnx.export(plain, (), dynamo=True, verbose=False).save(path)
    (racy,) = racy_nodes(path)
    assert (racy.op_type, racy.reduction) == ("ScatterND", "add")
    assert "bev.index_put_" in racy.stack_trace


BEV_SCRIPT = """
import torch

class BevPool(torch.nn.Module):
    def forward(self, xy, feats):
        cell = (xy[:, 0].floor() * 8 + xy[:, 1].floor()).long()
        bev = feats.new_zeros(64, feats.shape[1])
        bev.index_put_((cell,), feats, accumulate=True)
        return bev

def get_model():
    return BevPool()

def _points(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 2, generator=generator) * 8, torch.randn(count, 8, generator=generator)

def get_inputs():
    return _points(2000, 0)

def get_probe_inputs():
    return _points(2500, 1)

_points_dim = torch.export.Dim("points", min=2, max=1_000_000)
dynamic_shapes = ({0: _points_dim}, {0: _points_dim})
"""


def test_cli_converts_and_verifies_bev_pooling(cli, write_script, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("--out", out, write_script(BEV_SCRIPT))
    assert code == 0, stdout
    verified = read_report(out)["verification"]
    assert {(v["runtime"], v["inputs"]) for v in verified} == {
        (runtime, kind) for runtime in ("onnxruntime", "openvino") for kind in ("example", "probe")}
    assert all(v["passed"] and "self_disagreement" not in v for v in verified)
    assert racy_nodes(out / "model.onnx") == []
