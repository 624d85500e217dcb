"""multi_scale_deformable_attn: eager kernel, decomposition, autograd, fake kernel, argument
checks, and the four ways out (dynexport.to_onnx, dynexport.to_openvino, plain
torch.onnx.export, plain openvino.convert_model), against a NumPy reference written here;
and the examples/bevformer_layer.py model through export and both runtimes."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch

import dynexport
from dynexport.custom_ops.ms_deform_attn import _decomposition, multi_scale_deformable_attn

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
OP = torch.ops.dynexport.multi_scale_deformable_attn.default


# --- independent reference -----------------------------------------------------------------------

def numpy_msda(value, spatial_shapes, sampling_locations, attention_weights):
    """mmcv's definition in float64: per level, bilinear reads of the (H, W) map at
    (x·W − 0.5, y·H − 0.5), zeros outside, weighted and summed over levels and points."""
    value = np.asarray(value, dtype=np.float64)
    loc = np.asarray(sampling_locations, dtype=np.float64)
    attn = np.asarray(attention_weights, dtype=np.float64)
    bs, _, heads, dims = value.shape
    _, queries, _, levels, points, _ = loc.shape
    out = np.zeros((bs, queries, heads, dims))
    b = np.arange(bs).reshape(bs, 1, 1, 1)
    h = np.arange(heads).reshape(1, 1, heads, 1)
    start = 0
    for level, (height, width) in enumerate(np.asarray(spatial_shapes).tolist()):
        image = value[:, start:start + height * width].reshape(bs, height, width, heads, dims)
        start += height * width
        x = np.clip(loc[:, :, :, level, :, 0] * width - 0.5, -5, width + 5)
        y = np.clip(loc[:, :, :, level, :, 1] * height - 0.5, -5, height + 5)
        x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
                pixel = image[b, np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1), h]
                weight = wx * wy * inside * attn[:, :, :, level]
                out += (weight[..., None] * pixel).sum(3)
    return out.reshape(bs, queries, heads * dims)


def level_starts(shapes):
    areas = shapes[:, 0] * shapes[:, 1]
    return torch.cumsum(areas, 0) - areas


def random_case(seed, shapes=((6, 8), (3, 4), (2, 2), (1, 1)), bs=2, queries=5, heads=3,
                dims=4, points=2, spread=(-0.2, 1.2), dtype=torch.float32,
                index_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(shapes, dtype=torch.int64)
    keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    levels = shapes.shape[0]
    value = torch.randn(bs, keys, heads, dims, generator=g, dtype=dtype)
    low, high = spread
    loc = torch.rand(bs, queries, heads, levels, points, 2, generator=g, dtype=dtype)
    loc = loc * (high - low) + low
    weights = torch.rand(bs, queries, heads, levels, points, generator=g, dtype=dtype)
    return (value, shapes.to(index_dtype), level_starts(shapes).to(index_dtype), loc, weights)


def reference(args):
    value, shapes, _starts, loc, weights = args
    return numpy_msda(value, shapes, loc, weights)


# --- eager ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_random_cases_match_numpy(seed, dtype, index_dtype):
    args = random_case(seed, dtype=dtype, index_dtype=index_dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    out = multi_scale_deformable_attn(*args)
    assert out.dtype == dtype and out.shape == (2, 5, 12)
    np.testing.assert_allclose(out.double().numpy(), reference(args), rtol=tol, atol=tol)
    np.testing.assert_allclose(_decomposition(*args).double().numpy(), reference(args),
                               rtol=tol, atol=tol)


def edge_locations(shapes, bs=1, heads=2):
    """Pixel edges and centres of every level, the map's border (0 and 1), just outside,
    far outside, as (bs, Q, heads, levels, points, 2)."""
    levels = len(shapes)
    coords = [0.0, 1.0, 0.5, -1e-7, 1 + 1e-7, -0.01, 1.01, -3.0, 4.0, 1e6, -1e6]
    for h, w in shapes:
        coords += [(i + 0.5) / w for i in range(w)] + [i / w for i in range(w + 1)]
        coords += [(i + 0.5) / h for i in range(h)] + [i / h for i in range(h + 1)]
    coords = sorted(set(coords))
    pairs = torch.tensor([(x, y) for x in coords for y in coords[::3]], dtype=torch.float64)
    q = pairs.shape[0]
    loc = pairs.view(1, q, 1, 1, 1, 2).expand(bs, q, heads, levels, 1, 2)
    return loc.contiguous()


@pytest.mark.parametrize("shapes", [((4, 5), (1, 1)), ((1, 1),), ((1, 3), (3, 1), (2, 2))])
def test_edges_borders_outside_and_single_pixel_levels(shapes):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor(shapes)
    loc = edge_locations(shapes)
    value = torch.randn(1, int((t[:, 0] * t[:, 1]).sum()), 2, 3, generator=g,
                        dtype=torch.float64)
    weights = torch.rand(loc.shape[:5], generator=g, dtype=torch.float64)
    args = (value, t, level_starts(t), loc, weights)
    for out in (multi_scale_deformable_attn(*args), _decomposition(*args)):
        np.testing.assert_allclose(out.numpy(), reference(args), rtol=1e-12, atol=1e-12)


def test_single_pixel_by_hand():
    """One 1×1 level holding v: the centre reads v, the left edge of the map half of it
    (the other tap is outside), a corner a quarter, anything a pixel away nothing."""
    value = torch.tensor([2.0]).view(1, 1, 1, 1)
    shapes, starts = torch.tensor([[1, 1]]), torch.tensor([0])
    points = torch.tensor([[0.5, 0.5], [0.0, 0.5], [0.0, 0.0], [1.0, 1.0], [1.5, 0.5],
                           [-0.5, 0.5], [0.75, 0.5]])
    loc = points.view(1, 7, 1, 1, 1, 2)
    weights = torch.ones(1, 7, 1, 1, 1)
    expected = torch.tensor([2.0, 1.0, 0.5, 0.5, 0.0, 0.0, 1.5]).view(1, 7, 1)
    for fn in (multi_scale_deformable_attn, _decomposition):
        torch.testing.assert_close(fn(value, shapes, starts, loc, weights), expected)


def test_gradcheck_float64():
    value, shapes, starts, loc, weights = random_case(4, dtype=torch.float64, queries=3,
                                                      spread=(0.05, 0.95))
    inputs = [t.requires_grad_() for t in (value, loc, weights)]
    assert torch.autograd.gradcheck(
        lambda v, sl, aw: multi_scale_deformable_attn(v, shapes, starts, sl, aw), inputs)


def test_opcheck_registrations():
    value, shapes, starts, loc, weights = random_case(6, dtype=torch.float64)
    value.requires_grad_()
    results = torch.library.opcheck(OP, (value, shapes, starts, loc, weights))
    assert set(results.values()) == {"SUCCESS"}


def test_fake_kernel_on_meta_tensors():
    value = torch.empty(2, 99, 8, 32, device="meta")
    shapes = torch.empty(4, 2, dtype=torch.int64, device="meta")
    starts = torch.empty(4, dtype=torch.int64, device="meta")
    loc = torch.empty(2, 17, 8, 4, 4, 2, device="meta")
    out = multi_scale_deformable_attn(value, shapes, starts, loc, torch.empty(2, 17, 8, 4, 4,
                                                                              device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 17, 256)


def _replace(index, fn):
    def change(args):
        args[index] = fn(args[index])
    return change


@pytest.mark.parametrize("change, error, words", [
    (_replace(0, lambda t: t.half()), TypeError, "value must be float32"),
    (_replace(3, lambda t: t.double()), TypeError, "sampling_locations"),
    (_replace(4, lambda t: t.double()), TypeError, "attention_weights"),
    (_replace(1, lambda t: t.float()), TypeError, "spatial_shapes"),
    (_replace(2, lambda t: t.float()), TypeError, "level_start_index"),
    (_replace(0, lambda t: t[0]), ValueError, "value must be"),
    (_replace(1, lambda t: t[:, :1]), ValueError, "spatial_shapes must be (num_levels, 2)"),
    (_replace(3, lambda t: t[..., :1]), ValueError, "sampling_locations must be"),
    (_replace(4, lambda t: t[..., 0]), ValueError, "attention_weights must be"),
    (_replace(4, lambda t: t[:, :-1]), ValueError, "attention_weights has shape"),
    (_replace(3, lambda t: t[:, :, :-1]), ValueError, "sampling_locations has shape"),
    (_replace(3, lambda t: t[:, :, :, :-1]), ValueError, "sampling_locations has shape"),
    (_replace(2, lambda t: t[:-1]), ValueError, "level_start_index has shape"),
    (_replace(1, lambda t: t + 1), ValueError, "num_keys"),
    (_replace(1, lambda t: t.flip(0)), ValueError, "level_start_index"),
    (_replace(2, lambda t: t + 1), ValueError, "level_start_index"),
    (_replace(1, lambda t: t * torch.tensor([[1, 0]] + [[1, 1]] * 3)), ValueError, "positive"),
])
def test_bad_input_raises_a_clear_error(change, error, words):
    args = list(random_case(7))
    change(args)
    with pytest.raises(error, match="multi_scale_deformable_attn") as info:
        multi_scale_deformable_attn(*args)
    assert words in str(info.value)


# --- export and the four conversions -------------------------------------------------------------

class Attention(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights):
        return multi_scale_deformable_attn(value, spatial_shapes, level_start_index,
                                           sampling_locations, attention_weights)


def edge_case():
    """Edge locations on four levels, two of them single pixels, two points each."""
    g = torch.Generator().manual_seed(1)
    shapes = torch.tensor([[4, 5], [1, 1], [1, 1], [2, 2]])
    loc = edge_locations(shapes.tolist(), heads=3).float().expand(-1, -1, -1, -1, 2, -1)
    value = torch.randn(1, 26, 3, 4, generator=g)
    weights = torch.rand(loc.shape[:5], generator=g)
    return value, shapes, level_starts(shapes), loc.contiguous(), weights


EXAMPLE = random_case(10)
PROBES = {
    # other level sizes (same count), keys, queries and batch: nothing may be baked
    "other_sizes": random_case(11, shapes=((5, 7), (3, 3), (2, 1), (1, 1)), bs=3, queries=9,
                               spread=(-0.3, 1.3)),
    "edges": edge_case(),
    # BEVFormer's sizes: 6 cameras (the batch of the spatial cross-attention), 4 levels of a
    # 256×704 image at strides 8..64, 8 heads × 32 channels, 4 points, 900 queries per camera
    "bevformer": random_case(12, shapes=((32, 88), (16, 44), (8, 22), (4, 11)), bs=6,
                             queries=900, heads=8, dims=32, points=4, spread=(-0.05, 1.05)),
}


@pytest.fixture(scope="module")
def program():
    batch, keys, heads, dims, queries, points = (
        torch.export.Dim(n, min=1) for n in ("batch", "keys", "heads", "dims", "queries",
                                             "points"))
    per_point = {0: batch, 1: queries, 2: heads, 4: points}
    return dynexport.export(Attention(), EXAMPLE, dynamic_shapes=(
        {0: batch, 1: keys, 2: heads, 3: dims}, None, None, per_point, per_point))


@pytest.fixture(scope="module")
def expected():
    return {name: reference(args) for name, args in PROBES.items()}


def test_export_keeps_the_op(program):
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert OP in targets


def test_eager_at_bevformer_size(expected):
    out = Attention()(*PROBES["bevformer"])
    np.testing.assert_allclose(out.numpy(), expected["bevformer"], rtol=1e-5, atol=2e-5)


@pytest.fixture(scope="module")
def onnx_models(program, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    torch.onnx.export(program, dynamo=True, verbose=False).save(folder / "plain.onnx")
    return {"dynexport": dynexport.to_onnx(program, folder / "model.onnx"),
            "plain": folder / "plain.onnx"}


def run_onnxruntime(path, inputs, threads, runs=3):
    """`runs` runs of the model at `path` (a list of outputs each), `threads` intra-op
    threads. tests/test_grid_sample_5d.py uses this and `onnx_models` too."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = dict(zip(names, [t.numpy() for t in inputs], strict=True))
    return [session.run(None, feed) for _ in range(runs)]


@pytest.mark.parametrize("kind", ["dynexport", "plain"])
@pytest.mark.parametrize("threads", [2, 4])
def test_onnxruntime(onnx_models, expected, kind, threads):
    for probe, args in PROBES.items():
        runs = [outputs[0] for outputs in run_onnxruntime(onnx_models[kind], args, threads)]
        assert all(np.array_equal(runs[0], other) for other in runs[1:])
        np.testing.assert_allclose(runs[0], expected[probe], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["dynexport", "plain"])
def test_openvino(program, expected, kind):
    model = dynexport.to_openvino(program) if kind == "dynexport" else ov.convert_model(program)
    compiled = ov.Core().compile_model(model, "CPU", {**F32, "INFERENCE_NUM_THREADS": 2})
    for probe, args in PROBES.items():
        runs = [compiled([t.numpy() for t in args])[0].copy() for _ in range(2)]
        assert np.array_equal(runs[0], runs[1])
        np.testing.assert_allclose(runs[0], expected[probe], rtol=1e-5, atol=2e-5)


# --- the BEVFormer-style layer of examples/bevformer_layer.py ------------------------------------

def load_example():
    path = Path(__file__).parent.parent / "examples" / "bevformer_layer.py"
    spec = importlib.util.spec_from_file_location("bevformer_layer_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bevformer_layer_exports_and_runs_in_both_runtimes(tmp_path):
    example = load_example()
    # The script's structure (6 cameras, 4 levels, 8 heads, 4 points) at CI size.
    cfg = example.LayerConfig(bev_size=(6, 6), image_size=(64, 128), embed_dims=64,
                              ffn_dims=128)
    torch.manual_seed(0)
    model = example.BEVFormerLayer(cfg).eval()
    inputs = example.make_inputs(cfg, seed=1)
    probe = example.make_inputs(cfg, seed=2, yaw_offset=math.radians(25))
    seen = model.cross_attention.project(probe[-1])[1]
    assert seen.any() and not seen.all()  # some cameras see a query, not all of them
    program = dynexport.export(model, inputs)
    with torch.no_grad():
        want = [model(*args).numpy() for args in (inputs, probe)]
    session = ort.InferenceSession(str(dynexport.to_onnx(program, tmp_path / "layer.onnx")),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    compiled = ov.Core().compile_model(dynexport.to_openvino(program), "CPU", F32)
    for args, expected_out in zip((inputs, probe), want, strict=True):
        feed = [t.numpy() for t in args]
        got_ort = session.run(None, dict(zip(names, feed, strict=True)))[0]
        np.testing.assert_allclose(got_ort, expected_out, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(compiled(feed)[0], expected_out, rtol=1e-4, atol=1e-4)
