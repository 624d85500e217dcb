"""5-D grid_sample (trilinear and nearest, padding zeros/border, both align_corners) through
dynexport's decomposition: eager, dynexport.to_onnx / plain torch.onnx.export with
onnxruntime, dynexport.to_openvino / plain openvino.convert_model, each against a NumPy
reference written here."""

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import test_ms_deform_attn as shared
import torch
import torch.nn.functional as F

import dynexport
from dynexport.decompositions import decomposition_table
from dynexport.decompositions.grid_sample import grid_sampler_3d

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
onnx_models = shared.onnx_models  # the fixture, on this module's `program`
MODES = list(itertools.product(["bilinear", "nearest"], ["zeros", "border"], [False, True]))


# --- independent reference -----------------------------------------------------------------------

def numpy_grid_sample_3d(volume, grid, mode, padding, align_corners):
    """volume (N, C, D, H, W), grid (N, Do, Ho, Wo, 3) as (x, y, z) → (N, C, Do, Ho, Wo),
    written from the definition in torch's documentation, in float64."""
    volume = np.asarray(volume, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    n, c = volume.shape[:2]
    sizes = volume.shape[2:][::-1]  # W, H, D for x, y, z
    coords = []
    for k, size in enumerate(sizes):
        g = grid[..., k]
        pos = (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2
        if padding == "border":
            pos = np.clip(pos, 0, size - 1)
        coords.append(pos)
    batch = np.arange(n).reshape(n, 1, 1, 1)

    def read(ix, iy, iz):
        """volume[b, :, iz, iy, ix] for every point, zeros outside: (N, Do, Ho, Wo, C)."""
        w_, h_, d_ = sizes
        inside = (ix >= 0) & (ix < w_) & (iy >= 0) & (iy < h_) & (iz >= 0) & (iz < d_)
        values = volume[batch, :, np.clip(iz, 0, d_ - 1), np.clip(iy, 0, h_ - 1),
                        np.clip(ix, 0, w_ - 1)]
        return values * inside[..., None]

    x, y, z = coords
    if mode == "nearest":  # torch rounds half to even (nearbyint), as np.rint
        out = read(*(np.rint(np.clip(v, -9, 9e6)).astype(np.int64) for v in (x, y, z)))
    else:
        x0, y0, z0 = (np.floor(np.clip(v, -9, 9e6)).astype(np.int64) for v in (x, y, z))
        out = 0
        for dx, dy, dz in itertools.product((0, 1), repeat=3):
            weight = ((x - x0 if dx else 1 - (x - x0)) * (y - y0 if dy else 1 - (y - y0))
                      * (z - z0 if dz else 1 - (z - z0)))
            out = out + weight[..., None] * read(x0 + dx, y0 + dy, z0 + dz)
    return np.moveaxis(out, -1, 1)


def random_case(seed, n=2, c=3, size=(4, 5, 6), out=(2, 3, 4), spread=1.3,
                dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    volume = torch.randn(n, c, *size, generator=g, dtype=dtype)
    grid = (torch.rand(n, *out, 3, generator=g, dtype=dtype) * 2 - 1) * spread
    return volume, grid


def edge_grid(size=(4, 5, 6), dtype=torch.float32):
    """Points exactly on the corners and edges for both align_corners conventions, voxel
    centres, ties for nearest, just inside and outside, and far away."""
    d, h, w = size
    values = sorted({-1.0, 1.0, 0.0, -1 - 1 / w, 1 + 1 / w, -1 + 1 / w, 1 - 1 / w, 1e-7,
                     -1 - 1e-6, 1 + 1e-6, 2.0, -3.5, 1e6, -1e6, 0.5, -0.5})
    pts = torch.tensor(list(itertools.product(values, repeat=3)), dtype=dtype)
    return pts.view(1, 1, 1, -1, 3).flip(-1).contiguous()


# --- eager decomposition -------------------------------------------------------------------------

@pytest.mark.parametrize("mode, padding, align", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decomposition_matches_numpy(mode, padding, align, dtype):
    volume, grid = random_case(0, dtype=dtype)
    m, p = ["bilinear", "nearest"].index(mode), ["zeros", "border"].index(padding)
    expected = numpy_grid_sample_3d(volume, grid, mode, padding, align)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(grid_sampler_3d(volume, grid, m, p, align).double().numpy(),
                               expected, rtol=tol, atol=tol)
    # the reference agrees with torch's own kernel too
    np.testing.assert_allclose(F.grid_sample(volume, grid, mode, padding, align).double(),
                               expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode, padding, align", MODES)
@pytest.mark.parametrize("size", [(4, 5, 6), (1, 1, 1), (1, 3, 1)])
def test_edge_points_and_single_voxel_axes(mode, padding, align, size):
    g = torch.Generator().manual_seed(1)
    volume = torch.randn(1, 2, *size, generator=g, dtype=torch.float64)
    grid = edge_grid(size, torch.float64)
    m, p = ["bilinear", "nearest"].index(mode), ["zeros", "border"].index(padding)
    np.testing.assert_allclose(grid_sampler_3d(volume, grid, m, p, align).numpy(),
                               numpy_grid_sample_3d(volume, grid, mode, padding, align),
                               rtol=1e-9, atol=1e-9)


def test_declines_what_it_does_not_handle():
    volume, grid = random_case(2)
    assert grid_sampler_3d(volume, grid, 0, 2, False) is NotImplemented  # reflection
    assert grid_sampler_3d(volume, grid, 2, 0, False) is NotImplemented  # bicubic
    assert grid_sampler_3d(volume.half(), grid.half(), 0, 0, False) is NotImplemented
    table = decomposition_table()
    image, grid2d = torch.randn(1, 2, 4, 5), torch.rand(1, 3, 3, 2) * 2 - 1
    assert table[torch.ops.aten.grid_sampler.default](image, grid2d, 0, 0, False) \
        is NotImplemented


# --- export and the four conversions -------------------------------------------------------------

# Each mode, padding and align_corners value twice, in four of the eight combinations (all
# eight in one model made conversion take minutes; eager covers all eight above).
CONVERTED = [("bilinear", "zeros", False), ("bilinear", "border", True),
             ("nearest", "zeros", True), ("nearest", "border", False)]


class FourModes(torch.nn.Module):
    """One output per CONVERTED (mode, padding, align_corners)."""

    def forward(self, volume, grid):
        return tuple(F.grid_sample(volume, grid, mode, padding, align)
                     for mode, padding, align in CONVERTED)


EXAMPLE = random_case(3, out=(2, 3, 12))
# Another batch; edge points and points outside too.
_VOLUME, _GRID = random_case(4, n=3, out=(2, 3, 4), spread=1.4)
PROBE = (_VOLUME, torch.cat([_GRID, edge_grid()[:, :, :, ::512].expand(3, 2, 3, 8, 3)], dim=3))


def expected(inputs):
    return [numpy_grid_sample_3d(*inputs, *combo) for combo in CONVERTED]


@pytest.fixture(scope="module")
def program():
    # Only the batch is dynamic: symbolic output sizes made every conversion ~2× slower.
    batch = torch.export.Dim("batch", min=1)
    return dynexport.export(FourModes(), EXAMPLE, dynamic_shapes=({0: batch}, {0: batch}))


def test_export_replaces_5d_grid_sample_and_keeps_4d():
    class Both(torch.nn.Module):
        def forward(self, image, grid2d, volume, grid):
            return F.grid_sample(image, grid2d), F.grid_sample(volume, grid)

    args = (torch.randn(1, 2, 4, 5), torch.rand(1, 3, 3, 2) * 2 - 1, *random_case(5))
    ep = dynexport.export(Both(), args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.aten.grid_sampler.default) == 1  # the 4-D one
    assert torch.ops.aten.grid_sampler_3d.default not in targets
    assert torch.ops.aten.index_select.default in targets


@pytest.mark.parametrize("kind", ["dynexport", "plain"])
@pytest.mark.parametrize("threads", [2, 4])
def test_onnxruntime(onnx_models, kind, threads):
    assert "GridSample" not in {n.op_type for n in onnx.load(str(onnx_models[kind])).graph.node}
    runs = shared.run_onnxruntime(onnx_models[kind], PROBE, threads)
    for got, want, *others in zip(runs[0], expected(PROBE), *runs[1:], strict=True):
        assert all(np.array_equal(got, other) for other in others)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["dynexport", "plain"])
def test_openvino(program, kind):
    model = dynexport.to_openvino(program) if kind == "dynexport" else ov.convert_model(program)
    compiled = ov.Core().compile_model(model, "CPU", {**F32, "INFERENCE_NUM_THREADS": 2})
    for inputs in (EXAMPLE, PROBE):
        runs = [[o.copy() for o in compiled([t.numpy() for t in inputs]).values()]
                for _ in range(2)]
        for got, again, want in zip(runs[0], runs[1], expected(inputs), strict=True):
            assert np.array_equal(got, again)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_without_dynexport_torch_onnx_exports_gridsample_and_onnxruntime_runs_it(tmp_path):
    """What plain torch.onnx does with 5-D grid_sample today (docs/decompositions.md):
    ONNX GridSample (opset >= 20 allows N-D), and onnxruntime 1.32 computes it right."""
    ep = torch.export.export(FourModes(), EXAMPLE)
    torch.onnx.export(ep, dynamo=True, verbose=False).save(tmp_path / "native.onnx")
    model = onnx.load(str(tmp_path / "native.onnx"))
    assert {n.op_type for n in model.graph.node} >= {"GridSample"}
    session = ort.InferenceSession(str(tmp_path / "native.onnx"),
                                   providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in session.get_inputs()], [t.numpy() for t in EXAMPLE],
                    strict=True))
    for got, want in zip(session.run(None, feed), expected(EXAMPLE), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
