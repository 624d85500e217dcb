"""bev_pool_v2: eager kernel, autograd, fake kernel, argument checks, and the four ways out
(dynexport.to_onnx, dynexport.to_openvino, plain torch.onnx.export, plain
openvino.convert_model), each against an independent float64 reference."""

import functools

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import torch

import dynexport
from dynexport.custom_ops import bev_pool_v2, prepare_bev_pool_v2

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


# --- independent references ----------------------------------------------------------------------

def loop_reference(depth, feat, ranks_depth, ranks_feat, ranks_bev, shape):
    """The issue's definition, one point at a time, in float64."""
    b, dz, dy, dx, c = shape
    buf = np.zeros((b * dz * dy * dx, c))
    d = depth.detach().double().numpy().reshape(-1)
    f = feat.detach().double().numpy().reshape(-1, c)
    for i in range(len(ranks_depth)):
        buf[int(ranks_bev[i])] += d[int(ranks_depth[i])] * f[int(ranks_feat[i])]
    return buf.reshape(b, dz, dy, dx, c).transpose(0, 4, 1, 2, 3)


def add_at_reference(depth, feat, ranks_depth, ranks_feat, ranks_bev, shape):
    """The same with numpy's unbuffered np.add.at, for M in the hundreds of thousands."""
    b, dz, dy, dx, c = shape
    buf = np.zeros((b * dz * dy * dx, c))
    d = depth.double().numpy().reshape(-1)
    f = feat.double().numpy().reshape(-1, c)
    np.add.at(buf, ranks_bev.long().numpy(),
              d[ranks_depth.long().numpy()][:, None] * f[ranks_feat.long().numpy()])
    return buf.reshape(b, dz, dy, dx, c).transpose(0, 4, 1, 2, 3)


def random_case(seed, *, b=2, n=2, d=3, fh=4, fw=5, c=3, grid=(2, 3, 4), m=80, cells=None,
                dtype=torch.float32, index_dtype=torch.int32):
    """Random points with repeated depth, feature and cell ranks; `cells` < grid size
    crowds the points into fewer cells."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(b, n, d, fh, fw, generator=g, dtype=dtype)
    feat = torch.randn(b, n, fh, fw, c, generator=g, dtype=dtype)
    shape = (b, *grid, c)
    ncells = cells or b * grid[0] * grid[1] * grid[2]
    rd, rf, rb, st, ln = prepare_bev_pool_v2(
        torch.randint(0, depth.numel(), (m,), generator=g),
        torch.randint(0, b * n * fh * fw, (m,), generator=g),
        torch.randint(0, ncells, (m,), generator=g))
    rd, rf, rb, st, ln = (t.to(index_dtype) for t in (rd, rf, rb, st, ln))
    return depth, feat, rd, rf, rb, shape, st, ln


# --- eager ---------------------------------------------------------------------------------------

def bevdet_vector():
    depth = torch.tensor([0.3, 0.4, 0.2, 0.1, 0.7, 0.6, 0.8, 0.9]).view(1, 1, 2, 2, 2)
    feat = torch.ones(1, 1, 2, 2, 2)

    def i32(*v):
        return torch.tensor(v, dtype=torch.int32)

    return (depth.requires_grad_(), feat.requires_grad_(), i32(0, 4, 1, 6), i32(0, 0, 1, 2),
            i32(0, 0, 1, 1), (1, 1, 2, 2, 2), i32(0, 2), i32(2, 2))


def test_bevdet_unit_test_vector():
    args = bevdet_vector()
    out = bev_pool_v2(*args)
    out.sum().backward()
    assert out.shape == (1, 2, 1, 2, 2)
    assert out.sum().item() == pytest.approx(4.4)
    torch.testing.assert_close(args[0].grad.flatten(),
                               torch.tensor([2.0, 2, 0, 0, 2, 0, 2, 0]))
    torch.testing.assert_close(args[1].grad.flatten(),
                               torch.tensor([1.0, 1, 0.4, 0.4, 0.8, 0.8, 0, 0]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_random_cases_match_the_loop_reference(seed, dtype, index_dtype):
    args = random_case(seed, dtype=dtype, index_dtype=index_dtype, cells=7 + seed)
    out = bev_pool_v2(*args)
    assert out.dtype == dtype and out.is_contiguous()
    np.testing.assert_allclose(out.double().numpy(), loop_reference(*args[:6]),
                               rtol=1e-5, atol=1e-6)


def test_non_contiguous_inputs():
    depth, feat, *rest = random_case(7)
    feat_t = feat.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2)  # BEVDet's permute
    assert not feat_t.is_contiguous()
    np.testing.assert_allclose(bev_pool_v2(depth, feat_t, *rest).numpy(),
                               loop_reference(depth, feat, *rest[:4]), rtol=1e-5, atol=1e-6)


def test_no_points_gives_zeros_and_zero_gradients():
    depth, feat, *_ = random_case(0)
    depth.requires_grad_()
    feat.requires_grad_()
    empty = torch.zeros(0, dtype=torch.int32)
    out = bev_pool_v2(depth, feat, empty, empty, empty, (2, 2, 3, 4, 3), empty, empty)
    assert out.shape == (2, 3, 2, 3, 4) and not out.any()
    out.sum().backward()
    assert not depth.grad.any() and not feat.grad.any()


def test_gradcheck_float64():
    depth, feat, rd, rf, rb, shape, st, ln = random_case(3, dtype=torch.float64, m=40, cells=9)
    depth.requires_grad_()
    feat.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda d, f: bev_pool_v2(d, f, rd, rf, rb, shape, st, ln), (depth, feat))


def test_opcheck_registrations():
    """torch's own checks: schema, autograd registration, fake tensor, AOT dispatch."""
    depth, feat, rd, rf, rb, shape, st, ln = random_case(5, dtype=torch.float64)
    depth.requires_grad_()
    results = torch.library.opcheck(torch.ops.dynexport.bev_pool_v2.default,
                                    (depth, feat, rd, rf, rb, list(shape), st, ln))
    assert set(results.values()) == {"SUCCESS"}


@pytest.mark.parametrize("m", [0, 1, 17, 1000])
def test_fake_kernel_on_meta_tensors_any_m(m):
    depth = torch.empty(2, 3, 4, 5, 6, device="meta")
    feat = torch.empty(2, 3, 5, 6, 8, device="meta")
    ranks = torch.empty(m, dtype=torch.int32, device="meta")
    intervals = torch.empty(m // 2, dtype=torch.int32, device="meta")
    out = bev_pool_v2(depth, feat, ranks, ranks, ranks, (2, 1, 10, 11, 8), intervals, intervals)
    assert out.device.type == "meta" and out.shape == (2, 8, 1, 10, 11)


def test_prepare_sorts_by_cell_and_finds_runs():
    rd, rf, rb, st, ln = prepare_bev_pool_v2(torch.tensor([10, 11, 12, 13, 14]),
                                             torch.tensor([0, 1, 2, 3, 4]),
                                             torch.tensor([5, 2, 5, 9, 2]))
    assert rb.tolist() == [2, 2, 5, 5, 9]
    assert rd.tolist() == [11, 14, 10, 12, 13] and rf.tolist() == [1, 4, 0, 2, 3]
    assert st.tolist() == [0, 2, 4] and ln.tolist() == [2, 2, 1]
    assert {t.dtype for t in (rd, rf, rb, st, ln)} == {torch.int32}


def _bad(change):
    args = list(random_case(11, m=30, cells=6))
    change(args)
    return args


def _set(index, value):
    def change(args):
        args[index] = value(args) if callable(value) else value
    return change


def _poke(index, position, value):
    def change(args):
        args[index] = args[index].clone()
        args[index][position] = value
    return change


@pytest.mark.parametrize("change, error, words", [
    (_poke(2, 0, -1), ValueError, "ranks_depth"),
    (_poke(2, 3, 2 * 2 * 3 * 4 * 5), ValueError, "ranks_depth"),
    (_poke(3, 5, 2 * 2 * 4 * 5), ValueError, "ranks_feat"),
    (_poke(4, -1, 2 * 2 * 3 * 4), ValueError, "ranks_bev"),
    (_set(3, lambda a: a[3][:-1]), ValueError, "one length"),
    (_set(7, lambda a: a[7][:-1]), ValueError, "one length"),
    (_set(2, lambda a: a[2].float()), TypeError, "ranks_depth"),
    (_set(6, lambda a: a[6].to(torch.int16)), TypeError, "interval_starts"),
    (_set(0, lambda a: a[0].double()), TypeError, "float32 or both float64"),
    (_set(0, lambda a: a[0].half()), TypeError, "float32 or both float64"),
    (_set(1, lambda a: a[1].to(torch.int32)), TypeError, "float32 or both float64"),
    (_set(1, lambda a: a[1].permute(0, 1, 4, 2, 3)), ValueError, "(B, N, fH, fW, C)"),
    (_set(0, lambda a: a[0][0]), ValueError, "(B, N, D, fH, fW)"),
    (_set(5, (2, 2, 3, 4)), ValueError, "bev_feat_shape"),
    (_set(5, (2, 2, 3, 4, 5)), ValueError, "bev_feat_shape[4]"),
    (_set(4, lambda a: a[4].flip(0)), ValueError, "sorted"),
    (_set(6, lambda a: a[6][1:]), ValueError, "one length"),
    (_set(6, lambda a: a[6] + 1), ValueError, "runs of equal ranks_bev"),
    (_set(7, lambda a: a[7] * 2), ValueError, "runs of equal ranks_bev"),
])
def test_bad_input_raises_a_clear_error(change, error, words):
    with pytest.raises(error, match="bev_pool_v2") as info:
        bev_pool_v2(*_bad(change))
    assert words in str(info.value)


def test_intervals_that_skip_points_are_rejected():
    """Equal lengths but not the runs: the kernel and the ONNX form would disagree."""
    args = list(random_case(12, m=30, cells=6))
    starts, lengths = args[6], args[7]
    args[6], args[7] = starts[:-1], lengths[:-1]  # the last run is dropped
    with pytest.raises(ValueError, match="runs of equal ranks_bev"):
        bev_pool_v2(*args)


# --- export and the four conversions -------------------------------------------------------------

# FlashOcc M0 sizes: 6 cameras, 44 depth bins, 16×44 feature map, 64 channels, 200×200 grid.
M0 = dict(b=1, n=6, d=44, fh=16, fw=44, c=64, grid=(1, 200, 200))


class Pool(torch.nn.Module):
    def forward(self, depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths):
        return bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev, (1, 1, 200, 200, 64),
                           starts, lengths)


def model_inputs(case):
    depth, feat, rd, rf, rb, _shape, st, ln = case
    return (depth, feat, rd, rf, rb, st, ln)


EXAMPLE = model_inputs(random_case(0, m=300, **M0))
# Other M and P than the example; ~150k points crowded into 10k cells, as in FlashOcc M0.
PROBES = {
    "small": model_inputs(random_case(1, m=5_000, cells=2_000, **M0)),
    "m0": model_inputs(random_case(2, m=150_000, cells=10_000, **M0)),
    "empty": model_inputs(random_case(3, m=0, **M0)),
}


@functools.cache
def reference(probe):
    depth, feat, rd, rf, rb, _st, _ln = PROBES[probe]
    return add_at_reference(depth, feat, rd, rf, rb, (1, 1, 200, 200, 64))


def assert_matches(actual, probe):
    np.testing.assert_allclose(actual, reference(probe), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def program():
    m = torch.export.Dim("M", min=0)
    p = torch.export.Dim("P", min=0)
    return dynexport.export(Pool(), EXAMPLE, dynamic_shapes=(
        None, None, {0: m}, {0: m}, {0: m}, {0: p}, {0: p}))


def test_export_keeps_the_op_with_dynamic_m(program):
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.dynexport.bev_pool_v2.default in targets
    probe = PROBES["small"]
    torch.testing.assert_close(program.module()(*probe), Pool()(*probe))


def test_saved_program_loads_and_runs(program, tmp_path):
    torch.export.save(program, tmp_path / "exported.pt2")
    loaded = torch.export.load(tmp_path / "exported.pt2")
    probe = PROBES["small"]
    torch.testing.assert_close(loaded.module()(*probe), Pool()(*probe))


def onnx_nodes(path):
    return list(onnx.load(str(path)).graph.node)


def run_onnxruntime(path, inputs, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = dict(zip(names, [t.numpy() for t in inputs], strict=True))
    return [session.run(None, feed)[0] for _ in range(3)]


@pytest.fixture(scope="module")
def onnx_models(program, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    plain = folder / "plain.onnx"
    torch.onnx.export(program, dynamo=True, verbose=False).save(plain)
    return {"dynexport": dynexport.to_onnx(program, folder / "model.onnx"), "plain": plain}


def test_to_onnx_uses_the_blocked_form(onnx_models):
    nodes = onnx_nodes(onnx_models["dynexport"])
    assert "MatMul" in {n.op_type for n in nodes}
    for node in nodes:  # no reduction anywhere: every scatter writes distinct positions
        assert node.op_type not in ("ScatterElements", "ScatterND") or all(
            a.name != "reduction" or a.s == b"none" for a in node.attribute)


@pytest.mark.parametrize("kind", ["dynexport", "plain"])
def test_onnx_has_no_scatter_with_reduction_over_duplicates(onnx_models, kind):
    """ScatterND(add) races in onnxruntime with >1 thread; no ONNX form may contain it."""
    for node in onnx_nodes(onnx_models[kind]):
        if node.op_type == "ScatterND":
            reduction = {a.name: a.s for a in node.attribute}.get("reduction", b"none")
            assert reduction == b"none"


@pytest.mark.parametrize("kind", ["dynexport", "plain"])
@pytest.mark.parametrize("probe", ["small", "m0", "empty"])
def test_onnxruntime_is_exact_and_deterministic(onnx_models, kind, probe):
    """The same bits at 1, 2, 4 and 8 threads and from run to run, within f32 rounding of
    the float64 reference."""
    runs = [out for threads in (1, 2, 4, 8)
            for out in run_onnxruntime(onnx_models[kind], PROBES[probe], threads)]
    assert all(np.array_equal(runs[0], other) for other in runs[1:])
    assert_matches(runs[0], probe)


def crowded_case(seed, m, long_run):
    """`m` points, `long_run` of them in one cell among short runs of ~0.01-sized values: an
    interval across many of the ONNX form's blocks, next to cells a running sum over the
    big one would drown."""
    depth, feat, *_ = random_case(seed, m=1)
    g = torch.Generator().manual_seed(seed)
    cells = torch.cat([torch.full((long_run,), 5), torch.randint(0, 48, (m - long_run,),
                                                                  generator=g)])
    ranks_depth = torch.randint(0, depth.numel(), (m,), generator=g)
    ranks_depth[long_run:] = 0
    depth = depth.clone()
    depth.view(-1)[0] = 0.01
    return (depth, feat, *prepare_bev_pool_v2(
        ranks_depth, torch.randint(0, feat.numel() // 3, (m,), generator=g), cells))


@pytest.mark.parametrize("m, long_run", [(1, 1), (7, 0), (8, 3), (9, 9), (61, 30),
                                         (3000, 2500)])
def test_onnx_blocked_form_matches_the_loop_reference(tmp_path, m, long_run):
    """M below, at and past the block size, an interval across hundreds of blocks."""
    inputs = crowded_case(m, m, long_run)
    small = crowded_case(0, 20, 5)
    dim_m, dim_p = torch.export.Dim("M", min=0), torch.export.Dim("P", min=0)
    program = dynexport.export(SmallPool(), small, dynamic_shapes=(
        None, None, {0: dim_m}, {0: dim_m}, {0: dim_m}, {0: dim_p}, {0: dim_p}))
    path = dynexport.to_onnx(program, tmp_path / "model.onnx")
    expected = loop_reference(*inputs[:5], (2, 2, 3, 4, 3))
    for threads in (1, 8):
        np.testing.assert_allclose(run_onnxruntime(path, inputs, threads)[0], expected,
                                   rtol=1e-6, atol=1e-7)


class SmallPool(torch.nn.Module):
    def forward(self, depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths):
        return bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev, (2, 2, 3, 4, 3),
                           starts, lengths)


def test_onnx_model_runs_in_openvino_onnx_frontend(onnx_models):
    """The ONNX model reads into OpenVINO too; its CPU plugin computes the float64 running
    sum in float32, so the agreement is looser there (see _onnx's docstring)."""
    compiled = ov.Core().compile_model(str(onnx_models["dynexport"]), "CPU", F32)
    out = compiled([t.numpy() for t in PROBES["small"]])[0]
    np.testing.assert_allclose(out, reference("small"), rtol=1e-4, atol=1e-4)


def op_types(model):
    return {node.get_type_name() for node in model.get_ordered_ops()}


@pytest.fixture(scope="module")
def openvino_models(program):
    return {"dynexport": dynexport.to_openvino(program), "plain": ov.convert_model(program)}


def test_to_openvino_uses_the_conversion_extension(openvino_models):
    assert "ScatterNDUpdate" in op_types(openvino_models["dynexport"])
    # plain conversion goes through the decomposition instead
    assert "ScatterElementsUpdate" in op_types(openvino_models["plain"])


@pytest.mark.parametrize("kind", ["dynexport", "plain"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("probe", ["small", "m0", "empty"])
def test_openvino_is_exact_and_deterministic(openvino_models, kind, threads, probe):
    compiled = ov.Core().compile_model(openvino_models[kind], "CPU",
                                       {**F32, "INFERENCE_NUM_THREADS": threads})
    runs = [compiled([t.numpy() for t in PROBES[probe]])[0].copy() for _ in range(3)]
    assert all(np.array_equal(runs[0], other) for other in runs[1:])
    assert_matches(runs[0], probe)


def test_eager_matches_the_reference_at_m0_size():
    assert_matches(Pool()(*PROBES["m0"]).numpy(), "m0")


class BatchPool(torch.nn.Module):
    """bev_feat_shape built from a dynamic batch size: a symbolic entry in the int list."""

    def forward(self, depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths):
        return bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev,
                           (depth.shape[0], 2, 3, 4, feat.shape[-1]), starts, lengths)


def test_dynamic_batch_converts_everywhere(tmp_path):
    batch, m, p = (torch.export.Dim(name, min=lo) for name, lo in (("B", 1), ("M", 0), ("P", 0)))
    program = dynexport.export(BatchPool(), model_inputs(random_case(0, m=60)), dynamic_shapes=(
        {0: batch}, {0: batch}, {0: m}, {0: m}, {0: m}, {0: p}, {0: p}))
    inputs = model_inputs(random_case(1, b=3, m=150, cells=40))
    expected = loop_reference(*inputs[:5], (3, 2, 3, 4, 3))
    torch.onnx.export(program, dynamo=True, verbose=False).save(tmp_path / "plain.onnx")
    for path in (dynexport.to_onnx(program, tmp_path / "model.onnx"), tmp_path / "plain.onnx"):
        np.testing.assert_allclose(run_onnxruntime(path, inputs, 2)[0], expected,
                                   rtol=1e-5, atol=1e-6)
    for model in (dynexport.to_openvino(program), ov.convert_model(program)):
        out = ov.Core().compile_model(model, "CPU", F32)([t.numpy() for t in inputs])[0]
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
