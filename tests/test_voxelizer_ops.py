"""The lidar half of BEV (issue #23): a dynamic voxelizer's ops through both backends, on two sizes
of the dynamic dimension, against numpy (np.unique, np.<ufunc>.at, np.searchsorted), the same bit
for bit at 1, 2, 4 and 8 threads.

Both backends convert `aten.scatter_reduce.two` (backends/*_index_ops.py). `torch.unique`
(`_unique2`, `unique_dim`) and `unique_consecutive` are decomposed (decompositions/unique.py):
OpenVINO's fx frontend cannot take them, torch.onnx fails on unique_consecutive with a dim.
`index_reduce` becomes scatter_reduce, `searchsorted` bucketize (decompositions/scatter.py,
search.py); ONNX gets translations of bucketize and of a stable sort (backends/onnx_index_ops).
The shipped zoo voxelizer (examples/zoo/voxelizer.py) is checked at every thread count.
"""

import importlib.util

import numpy as np
import openvino as ov
import pytest
import torch
from helpers import REPO, read_report

import dynexport
from dynexport.backends import onnx_index_ops, openvino_index_ops
from dynexport.backends.openvino import save_openvino
from dynexport.decompositions import search, unique
from dynexport.pipeline import Options, run_script
from dynexport.runtimes import DEFAULT_OPENVINO_CONFIG, OnnxRuntimeRunner, OpenVINORunner

pytestmark = pytest.mark.slow  # converts through both exporters

COUNTS = (40, 97)  # two sizes of the dynamic dimension, the first one exported
# The shipped voxelizer is checked at every one of these; each op case at the ends of the range
# (1 and 8), where a race shows most, which halves the OpenVINO compiles per case.
THREADS = (1, 2, 4, 8)
OP_THREADS = (THREADS[0], THREADS[-1])
REDUCTIONS = ("sum", "prod", "mean", "amax", "amin")

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
    return {f"onnxruntime {n} threads": OnnxRuntimeRunner(path, n) for n in OP_THREADS}


def _openvino_runners(program, tmp_path) -> dict[str, OpenVINORunner]:
    xml = save_openvino(dynexport.to_openvino(program), tmp_path / "openvino")
    return {f"openvino {n} threads": OpenVINORunner(
        xml, config={**DEFAULT_OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": n}) for n in OP_THREADS}


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


@pytest.mark.parametrize("reduce", ["amax", "mean"])
def test_voxelizer_openvino(reduce, tmp_path):
    model, inputs, reference = _voxelizer_case(reduce)
    _assert_matches(_openvino_runners(_export(model, inputs[0]), tmp_path), inputs, reference)


# --- every form of unique ------------------------------------------------------------------------

def _consecutive_reference(rows: np.ndarray, flat: bool) -> list[np.ndarray]:
    """unique_consecutive by a plain loop over the elements (rows along dim 0)."""
    items = rows.reshape(-1) if flat else rows
    firsts, inverse, counts = [], [], []
    for i, item in enumerate(items):
        if i == 0 or not np.array_equal(item, items[i - 1]):
            firsts.append(item)
            counts.append(0)
        counts[-1] += 1
        inverse.append(len(firsts) - 1)
    inverse = np.array(inverse).reshape(rows.shape if flat else -1)
    return [np.array(firsts, dtype=rows.dtype), inverse, np.array(counts)]


def _unique_flat(x):
    return torch.unique(x, sorted=True, return_inverse=True, return_counts=True)


def _unique_rows(x):
    return torch.unique(x, return_inverse=True, return_counts=True, dim=0)


UNIQUE_FORMS = {
    # name: (call, columns of the input or None for 1-D, float input, numpy reference)
    "dim=None-2d": (_unique_flat, 3, False, lambda x: [
        *np.unique(x, return_inverse=True, return_counts=True)[:1],
        np.unique(x, return_inverse=True)[1].reshape(x.shape),
        np.unique(x, return_counts=True)[1]]),
    "dim=None-values-only": (lambda x: (torch.unique(x),), None, False,
                             lambda x: [np.unique(x)]),
    "dim=None-float": (_unique_flat, None, True, lambda x: [
        *np.unique(x, return_inverse=True, return_counts=True)[:1],
        np.unique(x, return_inverse=True)[1].reshape(x.shape),
        np.unique(x, return_counts=True)[1]]),
    "dim=0": (_unique_rows, 3, False, lambda x: [
        np.unique(x, axis=0), np.unique(x, axis=0, return_inverse=True)[1].reshape(-1),
        np.unique(x, axis=0, return_counts=True)[1]]),
    "dim=0-float": (_unique_rows, 2, True, lambda x: [
        np.unique(x, axis=0), np.unique(x, axis=0, return_inverse=True)[1].reshape(-1),
        np.unique(x, axis=0, return_counts=True)[1]]),
    "consecutive": (lambda x: torch.unique_consecutive(x, return_inverse=True,
                                                       return_counts=True),
                    None, False, lambda x: _consecutive_reference(x, flat=True)),
    "consecutive-dim=0": (lambda x: torch.unique_consecutive(x, return_inverse=True,
                                                             return_counts=True, dim=0),
                          2, False, lambda x: _consecutive_reference(x, flat=False)),
}


class Call(torch.nn.Module):
    """A model of one tensor input computing `call(x)`."""

    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, x: torch.Tensor):
        return self.call(x)


class Call2(Call):
    """A model of two tensor inputs computing `call(a, b)`."""

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return self.call(a, b)


def _unique_form_case(form: str):
    call, columns, floating, reference = UNIQUE_FORMS[form]
    generator = torch.Generator().manual_seed(3)
    inputs = []
    for count in COUNTS:
        shape = (count,) if columns is None else (count, columns)
        # values 0..2 in runs of 1-3 (runs matter for unique_consecutive), as float: -1.0..1.0
        values = torch.randint(0, 3, shape, generator=generator)
        runs = torch.randint(1, 4, (count,), generator=generator)
        values = values.repeat_interleave(runs, dim=0)[:count]
        inputs.append(((values - 1).float() if floating else values,))
    return Call(call), inputs, reference


@pytest.mark.parametrize("form", UNIQUE_FORMS)
@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_unique_forms(form, backend, tmp_path):
    model, inputs, reference = _unique_form_case(form)
    runners = (_onnx_runners if backend == "onnx" else _openvino_runners)(
        _export(model, inputs[0]), tmp_path)
    _assert_matches(runners, inputs, reference)


def test_unique_decompositions_on_empty_and_single_inputs():
    """The sizes the exported examples never have: 0 and 1 elements (eager, against numpy)."""
    for count in (0, 1, 2):
        ids = torch.arange(count) % 2
        values, inverse, counts = unique.unique2(ids, True, True, True)
        expected = np.unique(ids.numpy(), return_inverse=True, return_counts=True)
        for got, want in zip((values, inverse, counts), expected, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.reshape(got.shape))
        rows = torch.stack([ids, ids], 1)
        values, inverse, counts = unique.unique_dim(rows, 0, True, True, True)
        want = np.unique(rows.numpy(), axis=0, return_inverse=True, return_counts=True)
        np.testing.assert_array_equal(values.numpy(), want[0].reshape(values.shape))
        np.testing.assert_array_equal(counts.numpy(), want[2])
        got = unique.unique_consecutive(ids, True, True)
        for a, b in zip(got, _consecutive_reference(ids.numpy(), flat=True), strict=True):
            np.testing.assert_array_equal(a.numpy(), b.reshape(a.shape))


# --- index_reduce --------------------------------------------------------------------------------

class IndexReduce(torch.nn.Module):
    def __init__(self, reduce: str, include_self: bool, dtype: torch.dtype):
        super().__init__()
        self.reduce, self.include_self, self.dtype = reduce, include_self, dtype

    def forward(self, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        base = torch.full((6, 3), -2, dtype=self.dtype)
        return base.index_reduce(0, index, source, self.reduce, include_self=self.include_self)


def _index_reduce_case(reduce: str, include_self: bool, dtype: torch.dtype):
    model = IndexReduce(reduce, include_self, dtype)
    rows = ScatterReduce(reduce, include_self, dtype)  # the same reduction, row-wise
    inputs = []
    for seed, count in enumerate(COUNTS):
        index, source = _scatter_reduce_inputs(rows, count, seed)
        inputs.append((index[:, 0].contiguous(), source))
    return model, inputs, lambda index, source: [_scatter_reduce_reference(
        rows, np.repeat(index[:, None], 3, axis=1), source)]


INDEX_REDUCE_CASES = [
    *[pytest.param(r, s, torch.float32, id=f"{r}-include_self={s}")
      for r in ("prod", "mean", "amax", "amin") for s in (True, False)],
    *[pytest.param("mean", s, torch.int64, id=f"int64-mean-include_self={s}")
      for s in (True, False)],
]


@pytest.mark.parametrize(("reduce", "include_self", "dtype"), INDEX_REDUCE_CASES)
@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_index_reduce(reduce, include_self, dtype, backend, tmp_path):
    model, inputs, reference = _index_reduce_case(reduce, include_self, dtype)
    runners = (_onnx_runners if backend == "onnx" else _openvino_runners)(
        _export(model, inputs[0]), tmp_path)
    _assert_matches(runners, inputs, reference)


# --- searchsorted and bucketize ------------------------------------------------------------------

def _rows_searchsorted(sequence: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    return np.stack([np.searchsorted(s, v, side=side) for s, v in zip(sequence, values,
                                                                       strict=True)])


SEARCH_FORMS = {
    # name: (call(sequence, values), sorted sequence input, numpy reference(sequence, values))
    "searchsorted": (lambda s, v: torch.searchsorted(s, v), True,
                     lambda s, v: [np.searchsorted(s, v)]),
    "searchsorted-right": (lambda s, v: torch.searchsorted(s, v, right=True), True,
                           lambda s, v: [np.searchsorted(s, v, side="right")]),
    "searchsorted-side=right-int32": (
        lambda s, v: torch.searchsorted(s, v, side="right", out_int32=True), True,
        lambda s, v: [np.searchsorted(s, v, side="right").astype(np.int32)]),
    "searchsorted-sorter": (lambda s, v: torch.searchsorted(s, v, sorter=torch.argsort(s)),
                            False, lambda s, v: [np.searchsorted(s, v, sorter=np.argsort(s))]),
    "searchsorted-rows": (lambda s, v: torch.searchsorted(s, v), True,
                          lambda s, v: [_rows_searchsorted(s, v, "left")]),
    "bucketize": (lambda s, v: torch.bucketize(v, s), True,
                  lambda s, v: [np.searchsorted(s, v)]),
    "bucketize-right": (lambda s, v: torch.bucketize(v, s, right=True), True,
                        lambda s, v: [np.searchsorted(s, v, side="right")]),
}


def _search_case(form: str):
    call, is_sorted, reference = SEARCH_FORMS[form]
    generator = torch.Generator().manual_seed(4)
    inputs = []
    for count in COUNTS:
        # whole numbers: many values equal a boundary, where left and right differ
        shape = (count, 5) if form.endswith("-rows") else (count,)
        sequence = torch.randint(-10, 10, shape, generator=generator).float()
        if is_sorted:
            sequence = sequence.sort(dim=-1).values
        values = torch.randint(-12, 12, shape, generator=generator).float()
        inputs.append((sequence, values))
    return Call2(call), inputs, reference


@pytest.mark.parametrize("form", SEARCH_FORMS)
@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_searchsorted_and_bucketize(form, backend, tmp_path):
    model, inputs, reference = _search_case(form)
    runners = (_onnx_runners if backend == "onnx" else _openvino_runners)(
        _export(model, inputs[0]), tmp_path)
    _assert_matches(runners, inputs, reference)


def test_searchsorted_decomposition_is_bucketize_for_a_1d_sequence():
    """OpenVINO then converts it natively (Bucketize-3, no values x boundaries temporary)."""
    sequence, values = torch.tensor([1.0, 2.0, 2.0, 5.0]), torch.tensor([0.0, 2.0, 9.0])
    graph = torch.fx.experimental.proxy_tensor.make_fx(
        lambda s, v: search.searchsorted(s, v, right=True))(sequence, values).graph
    assert torch.ops.aten.bucketize.Tensor in {n.target for n in graph.nodes}


# --- what the raw tools do without dynexport -----------------------------------------------------

RAW_FAILURES = [
    # (case, backend, a fragment of the error): measured with torch 2.13, OpenVINO 2026.4
    pytest.param(lambda: _unique_form_case("dim=None-2d"), "openvino", "getitem", id="unique-ov"),
    pytest.param(lambda: _unique_form_case("consecutive-dim=0"), "onnx", "", id="consec-dim-onnx"),
    pytest.param(lambda: _index_reduce_case("amax", False, torch.float32), "openvino",
                 "aten.index_reduce", id="index_reduce-ov"),
    pytest.param(lambda: _index_reduce_case("amax", False, torch.float32), "onnx", "",
                 id="index_reduce-onnx"),
    pytest.param(lambda: _search_case("searchsorted"), "openvino", "searchsorted",
                 id="searchsorted-ov"),
    pytest.param(lambda: _search_case("searchsorted"), "onnx", "", id="searchsorted-onnx"),
    pytest.param(lambda: _search_case("bucketize"), "onnx", "", id="bucketize-onnx"),
    pytest.param(lambda: (Call2(lambda s, v: torch.sort(s, stable=True).indices + v.long()),
                          _search_case("bucketize")[1], None), "onnx", "", id="stable-sort-onnx"),
]


@pytest.mark.parametrize(("case", "backend", "fragment"), RAW_FAILURES)
def test_raw_tools_fail_where_dynexport_converts(case, backend, fragment):
    """The reason for each decomposition and translation above: plain torch.export + the
    backend's own converter fails on the op."""
    model, inputs, _ = case()
    count = torch.export.Dim("count", min=2, max=1_000_000)
    program = torch.export.export(model, inputs[0],
                                  dynamic_shapes=tuple({0: count} for _ in inputs[0]))
    with pytest.raises(Exception, match=fragment):  # noqa: B017 (each tool has its own error)
        if backend == "onnx":
            torch.onnx.export(program, dynamo=True)
        else:
            ov.convert_model(program)


# --- the zoo's voxelizer, as shipped -------------------------------------------------------------

def test_zoo_voxelizer_ships_models_exact_at_every_thread_count(tmp_path):
    """`python -m dynexport examples/zoo/voxelizer.py`: verified on both point counts, the
    shipped model.onnx and model.xml the same bit for bit at 1, 2, 4 and 8 threads, and the
    rewritten ops listed in `handled` at the user's lines."""
    script = REPO / "examples" / "zoo" / "voxelizer.py"
    run_script(script, [], Options(out_dir=tmp_path))
    report = read_report(tmp_path)
    assert report["ok"], report["stages"]
    assert {(v["runtime"], v["inputs"]) for v in report["verification"] if v["passed"]} == {
        (r, i) for r in ("onnxruntime", "openvino") for i in ("example", "probe")}
    source = script.read_text().splitlines()
    handled = {(h["what"].split("`")[1], source[h["line"] - 1].strip())
               for h in report["handled"] if h.get("line")}
    assert ("aten.unique_dim.default", next(s.strip() for s in source
                                            if "= torch.unique(" in s)) in handled
    assert {what for what, _ in handled} >= {"aten.unique_dim.default",
                                             "aten.scatter_reduce.two"}
    spec = importlib.util.spec_from_file_location("voxelizer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.get_model()
    inputs = [module.get_inputs(), module.get_probe_inputs()]
    runners = {f"onnxruntime {n} threads": OnnxRuntimeRunner(tmp_path / "model.onnx", n)
               for n in THREADS}
    runners |= {f"openvino {n} threads": OpenVINORunner(
        tmp_path / "openvino" / "model.xml",
        config={**DEFAULT_OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": n}) for n in THREADS}
    for example in inputs:
        with torch.no_grad():
            expected = [t.numpy() for t in model(*example).values()]
        outputs = {name: runner.run([t.numpy() for t in example])
                   for name, runner in runners.items()}
        for name, actual in outputs.items():
            for got, want in zip(actual, expected, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
        first, *others = outputs.values()
        for other in others:
            for a, b in zip(first, other, strict=True):
                np.testing.assert_array_equal(a, b)
