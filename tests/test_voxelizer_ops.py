"""The lidar half of BEV (issue #23): a dynamic voxelizer's `torch.unique` and `scatter_reduce`
through both backends, on two point counts, against numpy (np.unique, np.<ufunc>.at).

What holds today: both backends convert `aten.scatter_reduce.two` exactly, every reduction,
include_self both ways, an index narrower than src: OpenVINO by backends/openvino_index_ops.py,
ONNX by backends/onnx_index_ops.py in place of torchlib's (which wrote "mean" as a plain
ScatterElements(reduction="none") and did not slice src). onnxruntime runs torch.onnx's Unique
exactly. OpenVINO's fx frontend cannot take `aten._unique2.default` from a Python extension:
those cases are strict xfails, so a fix shows up as XPASS.
"""

import numpy as np
import openvino as ov
import pytest
import torch

import dynexport
from dynexport.backends import onnx_index_ops, openvino_index_ops
from dynexport.backends.openvino import save_openvino
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG, OnnxRuntimeRunner, OpenVINORunner

pytestmark = pytest.mark.slow  # converts through both exporters

COUNTS = (40, 97)  # two sizes of the dynamic dimension, the first one exported
THREADS = (1, 4)
REDUCTIONS = ("sum", "prod", "mean", "amax", "amin")
OPENVINO_UNIQUE = pytest.mark.xfail(strict=True, raises=ov.frontend.OpConversionFailure,
                                    reason="OpenVINO's fx frontend keeps one output of a Python "
                                           "extension; aten._unique2.default has three")


# --- models and their numpy references -----------------------------------------------------------

class ScatterReduce(torch.nn.Module):
    """A 6 x 3 tensor of -2 (row 5 never indexed) reduced into by rows of `src`. `columns`
    < 3 indexes only src's leading columns; include_self None leaves the argument out."""

    def __init__(self, reduce: str, include_self: bool | None, dtype: torch.dtype,
                 columns: int = 3):
        super().__init__()
        self.reduce, self.include_self, self.dtype, self.columns = (reduce, include_self, dtype,
                                                                    columns)

    def forward(self, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        base = torch.full((6, 3), -2, dtype=self.dtype)
        keywords = {} if self.include_self is None else {"include_self": self.include_self}
        return base.scatter_reduce(0, index[:, :self.columns], src, self.reduce, **keywords)


def _scatter_reduce_inputs(model: ScatterReduce, count: int,
                           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, 5, (count, 3), generator=generator)
    scale = 1.0 if model.reduce == "prod" else 5.0  # products of ~8 factors stay moderate
    return index, (torch.randn(count, 3, generator=generator) * scale).to(model.dtype)


_UFUNCS = {"sum": np.add, "mean": np.add, "prod": np.multiply, "amax": np.maximum,
           "amin": np.minimum}


def _neutral(reduce: str, dtype: np.dtype) -> float | int:
    if reduce in ("sum", "mean"):
        return 0
    if reduce == "prod":
        return 1
    extreme = np.iinfo(dtype).max if dtype.kind == "i" else np.inf
    return -extreme if reduce == "amax" else extreme


def _scatter_reduce_reference(model: ScatterReduce, index: np.ndarray,
                              src: np.ndarray) -> np.ndarray:
    """torch.scatter_reduce's definition with np.<ufunc>.at, floats in float64; integer mean
    floor-divides like torch."""
    dtype = np.dtype(np.int64) if src.dtype.kind == "i" else np.dtype(np.float64)
    out = np.full((6, 3), -2, dtype=dtype)
    rows = index[:, :model.columns]
    columns = np.broadcast_to(np.arange(model.columns), rows.shape)
    values = src[:, :model.columns].astype(dtype)
    include_self = model.include_self is not False
    if not include_self:
        out[rows, columns] = _neutral(model.reduce, dtype)
    _UFUNCS[model.reduce].at(out, (rows, columns), values)
    if model.reduce == "mean":
        count = np.full(out.shape, int(include_self))
        np.add.at(count, (rows, columns), 1)
        count = np.maximum(count, 1)
        out = out // count if dtype.kind == "i" else out / count
    return out


class Unique(torch.nn.Module):
    def __init__(self, return_counts: bool):
        super().__init__()
        self.return_counts = return_counts

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.unique(ids, sorted=True, return_inverse=True,
                            return_counts=self.return_counts)


def _unique_reference(model: Unique, ids: np.ndarray) -> list[np.ndarray]:
    values, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return [values, inverse.reshape(ids.shape)] + ([counts] if model.return_counts else [])


GRID = (8, 8, 4)
LOW = (0.0, 0.0, -2.0)  # the grid's corner; voxels of 1 m


class Voxelizer(torch.nn.Module):
    """Points (N, 4) → sorted voxel ids, per-voxel features (amax or mean of its points),
    points per voxel; the number of voxels is data-dependent."""

    def __init__(self, reduce: str):
        super().__init__()
        self.reduce = reduce

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        coords = torch.floor(points[:, :3] - torch.tensor(LOW)).long()
        coords = torch.minimum(coords.clamp(min=0), torch.tensor(GRID) - 1)
        ids = (coords[:, 0] * GRID[1] + coords[:, 1]) * GRID[2] + coords[:, 2]
        voxels, inverse, counts = torch.unique(ids, sorted=True, return_inverse=True,
                                               return_counts=True)
        index = inverse[:, None].expand(-1, points.shape[1])
        features = torch.zeros(voxels.shape[0], points.shape[1]).scatter_reduce(
            0, index, points, self.reduce, include_self=False)
        return voxels, features, counts


def _points(count: int, seed: int) -> torch.Tensor:
    """Points over the grid and 1 m past it on every side (so clamping matters), intensity
    in [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    extent = torch.tensor([*GRID, 0.0]) + torch.tensor([2.0, 2.0, 2.0, 1.0])
    start = torch.tensor([*LOW, 0.0]) - torch.tensor([1.0, 1.0, 1.0, 0.0])
    return torch.rand(count, 4, generator=generator) * extent + start


def _voxelizer_reference(model: Voxelizer, points: np.ndarray) -> list[np.ndarray]:
    # the voxel of each point in float32, as torch computes it (a point on a boundary
    # must fall on the same side)
    coords = np.floor(points[:, :3] - np.array(LOW, np.float32)).astype(np.int64)
    coords = np.clip(coords, 0, np.array(GRID) - 1)
    ids = (coords[:, 0] * GRID[1] + coords[:, 1]) * GRID[2] + coords[:, 2]
    voxels, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    features = np.full((len(voxels), points.shape[1]), _neutral(model.reduce, np.dtype(float)),
                       dtype=np.float64)
    _UFUNCS[model.reduce].at(features, inverse, points.astype(np.float64))
    if model.reduce == "mean":
        features /= counts[:, None]
    return [voxels, features, counts]


# --- conversion, runtimes, comparison ------------------------------------------------------------

def _export(model: torch.nn.Module, example: tuple[torch.Tensor, ...]):
    count = torch.export.Dim("count", min=2, max=1_000_000)
    return dynexport.export(model, example, dynamic_shapes=tuple({0: count} for _ in example))


def _onnx_runners(program, tmp_path) -> dict[str, OnnxRuntimeRunner]:
    path = dynexport.to_onnx(program, tmp_path / "model.onnx")
    return {f"onnxruntime {n} threads": OnnxRuntimeRunner(path, n) for n in THREADS}


def _openvino_runners(program, tmp_path) -> dict[str, OpenVINORunner]:
    xml = save_openvino(dynexport.to_openvino(program), tmp_path / "openvino")
    return {f"openvino {n} threads": OpenVINORunner(
        xml, config={**DEFAULT_OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": n}) for n in THREADS}


def _assert_matches(runners: dict, inputs: list[tuple[torch.Tensor, ...]], reference) -> None:
    """Each runtime's outputs on each input equal the reference (integers exactly, floats
    within float32 rounding), and the same bit for bit at every thread count."""
    for example in inputs:
        arrays = [t.numpy() for t in example]
        expected = reference(*arrays)
        outputs = {name: runner.run(arrays) for name, runner in runners.items()}
        for name, actual in outputs.items():
            assert len(actual) == len(expected), name
            for got, want in zip(actual, expected, strict=True):
                assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
                if want.dtype.kind == "i":
                    np.testing.assert_array_equal(got, want, err_msg=name)
                else:
                    np.testing.assert_allclose(got, want, rtol=1e-5,
                                               atol=1e-5 * max(1.0, np.abs(want).max()),
                                               err_msg=name)
        first, *others = outputs.values()
        for other in others:
            for a, b in zip(first, other, strict=True):
                np.testing.assert_array_equal(a, b)


def _scatter_reduce_case(reduce: str, include_self: bool | None, dtype: torch.dtype,
                         columns: int = 3):
    model = ScatterReduce(reduce, include_self, dtype, columns)
    inputs = [_scatter_reduce_inputs(model, count, seed) for seed, count in enumerate(COUNTS)]
    return model, inputs, lambda index, src: [_scatter_reduce_reference(model, index, src)]


SCATTER_CASES = [
    *[pytest.param(r, s, torch.float32, 3, id=f"{r}-include_self={s}")
      for r in REDUCTIONS for s in (True, False)],
    *[pytest.param("mean", s, torch.int64, 3, id=f"int64-mean-include_self={s}")
      for s in (True, False)],
    pytest.param("amax", None, torch.float32, 3, id="include_self-left-out"),
    pytest.param("sum", False, torch.float32, 2, id="index-narrower-than-src"),
]


# --- scatter_reduce ------------------------------------------------------------------------------

@pytest.mark.parametrize(("reduce", "include_self", "dtype", "columns"), SCATTER_CASES)
def test_scatter_reduce_openvino(reduce, include_self, dtype, columns, tmp_path):
    model, inputs, reference = _scatter_reduce_case(reduce, include_self, dtype, columns)
    _assert_matches(_openvino_runners(_export(model, inputs[0]), tmp_path), inputs, reference)


@pytest.mark.parametrize(("reduce", "include_self", "dtype", "columns"), SCATTER_CASES)
def test_scatter_reduce_onnx(reduce, include_self, dtype, columns, tmp_path):
    model, inputs, reference = _scatter_reduce_case(reduce, include_self, dtype, columns)
    _assert_matches(_onnx_runners(_export(model, inputs[0]), tmp_path), inputs, reference)


def test_torchlibs_scatter_reduce_mean_is_wrong_without_the_translation(monkeypatch, tmp_path):
    """The reason for onnx_index_ops: torchlib writes "mean" as a plain ScatterElements."""
    model, inputs, reference = _scatter_reduce_case("mean", False, torch.float32)
    monkeypatch.setattr(onnx_index_ops, "table", lambda: {})
    runners = _onnx_runners(_export(model, inputs[0]), tmp_path)
    with pytest.raises(AssertionError):
        _assert_matches(runners, inputs, reference)


def test_openvino_lacks_scatter_reduce_without_the_extension(monkeypatch):
    model, inputs, _ = _scatter_reduce_case("amax", False, torch.float32)
    program = _export(model, inputs[0])
    monkeypatch.setattr(openvino_index_ops, "index_op_extensions", lambda: [])
    with pytest.raises(ov.frontend.OpConversionFailure, match=r"aten\.scatter_reduce\.two"):
        dynexport.to_openvino(program)


# --- unique and the voxelizer --------------------------------------------------------------------

def _unique_case(return_counts: bool):
    model = Unique(return_counts)
    generator = torch.Generator().manual_seed(0)
    inputs = [(torch.randint(-20, 20, (count,), generator=generator),) for count in COUNTS]
    return model, inputs, lambda ids: _unique_reference(model, ids)


@pytest.mark.parametrize("return_counts", [True, False], ids=["counts", "no-counts"])
def test_unique_onnx(return_counts, tmp_path):
    model, inputs, reference = _unique_case(return_counts)
    _assert_matches(_onnx_runners(_export(model, inputs[0]), tmp_path), inputs, reference)


@OPENVINO_UNIQUE
@pytest.mark.parametrize("return_counts", [True, False], ids=["counts", "no-counts"])
def test_unique_openvino(return_counts, tmp_path):
    model, inputs, reference = _unique_case(return_counts)
    _assert_matches(_openvino_runners(_export(model, inputs[0]), tmp_path), inputs, reference)


def _voxelizer_case(reduce: str):
    model = Voxelizer(reduce)
    inputs = [(_points(count, seed),) for seed, count in enumerate((500, 1234))]
    return model, inputs, lambda points: _voxelizer_reference(model, points)


@pytest.mark.parametrize("reduce", ["amax", "mean"])
def test_voxelizer_onnx(reduce, tmp_path):
    model, inputs, reference = _voxelizer_case(reduce)
    _assert_matches(_onnx_runners(_export(model, inputs[0]), tmp_path), inputs, reference)


@OPENVINO_UNIQUE
@pytest.mark.parametrize("reduce", ["amax", "mean"])
def test_voxelizer_openvino(reduce, tmp_path):
    model, inputs, reference = _voxelizer_case(reduce)
    _assert_matches(_openvino_runners(_export(model, inputs[0]), tmp_path), inputs, reference)
