"""Decompositions of inverse / det / solve: parity with numpy.linalg (an independent
reference) in eager, onnxruntime and OpenVINO, gradients, singular inputs, and what
decompose() keeps in the graph."""

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch

import dynexport
from dynexport.decompositions import decompose, decomposition_table, program_ops
from dynexport.decompositions.inverse import det, inverse, linalg_inv_ex, linalg_solve

# Converts models through both exporters (seconds a test): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

SIZES = (2, 3, 4, 6)
EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}
# Ill-conditioned but invertible: cond * eps stays well below 1.
CONDS = {np.float32: (10.0, 1e4), np.float64: (10.0, 1e4, 1e10)}
LINALG_OPS = {"inverse", "linalg_inv", "linalg_inv_ex", "linalg_det", "det", "linalg_solve",
              "_linalg_det", "_linalg_solve_ex", "linalg_solve_ex"}


def matrices(n: int, conds, dtype, per_cond: int = 6, seed: int = 0) -> np.ndarray:
    """(len(conds) * per_cond, n, n) matrices U diag(s) V^T with cond(A) = each of conds."""
    rng = np.random.default_rng(seed + n)
    out = []
    for cond in conds:
        u, _ = np.linalg.qr(rng.standard_normal((per_cond, n, n)))
        v, _ = np.linalg.qr(rng.standard_normal((per_cond, n, n)))
        out.append((u * np.logspace(0, -np.log10(cond), n)) @ v.transpose(0, 2, 1))
    return np.concatenate(out).astype(dtype)


def rel_err(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-matrix relative error in the Frobenius norm."""
    axes = (-2, -1) if ref.ndim >= 3 else (-1,)
    return np.linalg.norm(x - ref, axis=axes) / np.linalg.norm(ref, axis=axes)


def assert_inverse_close(x: np.ndarray, a: np.ndarray, eps: float, factor: float = 8.0):
    """Forward error within factor * cond(A) * eps, the bound LAPACK's own inverse meets."""
    a64 = a.astype(np.float64)
    ref = np.linalg.inv(a64)
    bound = factor * np.linalg.cond(a64) * eps
    err = rel_err(x.astype(np.float64), ref)
    assert np.all(err <= bound), f"worst error / bound: {np.max(err / bound):.2f}"


# --- eager: the decomposition itself ------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES + (1, 5, 8))
def test_inverse_matches_numpy_eager(n, dtype):
    a = matrices(n, CONDS[dtype], dtype).reshape(-1, 2, n, n)  # two batch dimensions
    x = inverse(torch.from_numpy(a)).numpy()
    assert x.dtype == dtype and x.shape == a.shape
    assert_inverse_close(x, a, EPS[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [3, 6])
def test_det_and_solve_match_numpy_eager(n, dtype):
    a = matrices(n, (10.0,), dtype)
    b = np.random.default_rng(1).standard_normal((len(a), n, 2)).astype(dtype)
    A, B = torch.from_numpy(a), torch.from_numpy(b)
    tol = 50 * EPS[dtype]
    assert np.all(rel_err(det(A).numpy()[:, None], np.linalg.det(a)[:, None]) < tol)
    assert np.all(rel_err(linalg_solve(A, B).numpy(), np.linalg.solve(a, b)) < tol)
    vector = np.linalg.solve(a, b[..., :1])[..., 0]
    assert np.all(rel_err(linalg_solve(A, B[..., 0]).numpy(), vector) < tol)
    # left=False solves X A = B.
    bt = b.transpose(0, 2, 1)
    right = linalg_solve(A, torch.from_numpy(bt), left=False).numpy()
    assert np.all(rel_err(right, np.linalg.solve(a.transpose(0, 2, 1), b).transpose(0, 2, 1)) < tol)


def test_det_sign_follows_row_swaps():
    # A permutation matrix needs swaps at every step; det is +-1 exactly.
    perm = torch.eye(6, dtype=torch.float64)[[5, 0, 4, 1, 3, 2]]
    assert det(perm).item() == np.linalg.det(perm.numpy())


@pytest.mark.parametrize("n", [3, 4, 6])
def test_gradient_matches_torch(n):
    a = torch.from_numpy(matrices(n, (10.0,), np.float64)[:3]).requires_grad_()
    assert torch.autograd.gradcheck(inverse, (a,))
    assert torch.autograd.gradcheck(det, (a,))
    g = torch.randn(3, n, n, dtype=torch.float64)
    ours = torch.autograd.grad(inverse(a), a, g)[0]
    theirs = torch.autograd.grad(torch.linalg.inv(a), a, g)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n", [3, 6])
def test_singular_gives_nonfinite_not_an_error(n):
    a = torch.ones(2, n, n)
    x, info = linalg_inv_ex(a)
    assert not torch.isfinite(x).all()
    assert info.dtype == torch.int32 and info.tolist() == [1, 1]
    assert det(a).tolist() == [0.0, 0.0]


def test_unhandled_inputs_are_declined():
    assert inverse(torch.randn(9, 9)) is NotImplemented  # larger than the unrolled limit
    assert inverse(torch.randn(3, 3, dtype=torch.complex64)) is NotImplemented
    assert inverse(torch.randn(3, 3, dtype=torch.float16)) is NotImplemented


# --- decompose(): what the graph keeps ---------------------------------------------------

@torch.library.custom_op("dynexport_test::shift", mutates_args=())
def shift(x: torch.Tensor) -> torch.Tensor:
    return x + 1


@shift.register_fake
def _(x):
    return torch.empty_like(x)


# As dynexport.custom_ops' kit does: a decomposition as the op's CompositeImplicitAutograd
# kernel, which the backends' own tables apply but dynexport's must not.
_LIBRARY = torch.library.Library("dynexport_test", "FRAGMENT")
_LIBRARY.impl("shift", lambda x: x + 1, "CompositeImplicitAutograd")


class Linalg(torch.nn.Module):
    def forward(self, a, big):
        a = shift(a)
        return (torch.inverse(a), torch.linalg.det(a), torch.linalg.solve(a, a[..., :1]),
                torch.linalg.inv_ex(a)[0], torch.inverse(big), torch.nn.functional.hardswish(a))


def test_decompose_replaces_only_the_table_ops():
    ep = torch.export.export(Linalg(), (torch.randn(2, 4, 4), torch.randn(12, 12)))
    before = {getattr(t, "__name__", "") for t in program_ops(ep)}
    assert {"inverse.default", "linalg_det.default", "linalg_solve.default"} <= before
    out = decompose(ep)
    ops = program_ops(out)
    names = {t.name() for t in ops if isinstance(t, torch._ops.OpOverload)}
    # the 12x12 inverse is beyond the unrolled limit and stays for the preflight to report
    assert [t for t in ops if isinstance(t, torch._ops.OpOverload)
            and t.name().split("::")[1] in LINALG_OPS] == [torch.ops.aten.inverse.default]
    assert "dynexport_test::shift" in names  # custom ops are kept, CIA kernel or not
    assert "aten::hardswish" in names  # other CompositeImplicitAutograd ops are not decomposed
    args = (torch.randn(2, 4, 4), torch.randn(12, 12))
    for got, want in zip(out.module()(*args), Linalg()(*args), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_decompose_is_a_no_op_without_table_ops():
    ep = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),))
    assert decompose(ep) is ep


def test_decompose_splices_without_retracing(monkeypatch, tmp_path):
    """The table's nodes are replaced one by one (a re-trace costs seconds on big models); the
    captured program is left as it was and the result saves and loads."""
    ep = torch.export.export(Linalg(), (torch.randn(2, 4, 4), torch.randn(12, 12)))
    captured_ops = program_ops(ep)

    def no_retrace(*_args, **_kwargs):
        raise AssertionError("decompose re-traced the program")

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", no_retrace)
    out = decompose(ep)
    assert program_ops(ep) == captured_ops
    assert torch.ops.aten.linalg_det.default not in program_ops(out)
    torch.export.save(out, tmp_path / "decomposed.pt2")
    loaded = torch.export.load(tmp_path / "decomposed.pt2")
    args = (torch.randn(2, 4, 4), torch.randn(12, 12))
    for got, want in zip(loaded.module()(*args), Linalg()(*args), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


class InverseInBranch(torch.nn.Module):
    def forward(self, a, flag):
        return torch.cond(flag.sum() > 0, lambda m: torch.inverse(m).contiguous(),
                          lambda m: m.clone(), (a,))


def test_decompose_reaches_control_flow_branches():
    a = torch.from_numpy(matrices(3, (10.0,), np.float64, per_cond=4))
    ep = torch.export.export(InverseInBranch(), (a, torch.ones(1)))
    assert torch.ops.aten.inverse.default in program_ops(ep)  # inside the true branch
    out = decompose(ep)
    assert not {op for op in program_ops(out) if isinstance(op, torch._ops.OpOverload)
                and op.name().split("::")[1] in LINALG_OPS}
    assert_inverse_close(out.module()(a, torch.ones(1)).numpy(), a.numpy(), EPS[np.float64])
    torch.testing.assert_close(out.module()(a, -torch.ones(1)), a)


def test_splice_refuses_a_decomposition_that_makes_constants():
    from dynexport.decompositions.splice import SpliceUnsupported, splice_decompositions

    ep = torch.export.export(torch.nn.ReLU(), (torch.randn(3),))
    table = {torch.ops.aten.relu.default: lambda x: x * torch.tensor([2.0, 3.0, 4.0])}
    with pytest.raises(SpliceUnsupported, match="constant"):
        splice_decompositions(ep, table)


def test_table_spares_dynexport_custom_ops():
    assert all(op.namespace == "aten" for op in decomposition_table())


# --- ONNX (onnxruntime) and OpenVINO ---------------------------------------------------------

class Everything(torch.nn.Module):
    """Inverse of each size, det and solve (their eager tests cover vector and left=False B)."""

    def forward(self, a2, a3, a4, a6, b):
        return (torch.inverse(a2), torch.linalg.inv(a3), torch.inverse(a4), torch.linalg.inv(a6),
                torch.linalg.det(a3), torch.linalg.solve(a3, b))


def everything_inputs(dtype, batch: int, seed: int = 0) -> list[np.ndarray]:
    mats = [matrices(n, CONDS[dtype], dtype, per_cond=batch, seed=seed) for n in SIZES]
    b = np.random.default_rng(seed).standard_normal((len(mats[0]), 3, 2)).astype(dtype)
    return mats + [b]


def check_outputs(outputs, inputs, eps):
    """Inverses, det and solve each within 8 cond(A) eps of numpy.linalg in float64."""
    for got, a in zip(outputs[:4], inputs[:4], strict=True):
        assert_inverse_close(np.asarray(got), a, eps)
    a3, b = (x.astype(np.float64) for x in (inputs[1], inputs[4]))
    bound = 8 * np.linalg.cond(a3) * eps
    assert np.all(rel_err(np.asarray(outputs[4], np.float64)[:, None],
                          np.linalg.det(a3)[:, None]) <= bound)
    assert np.all(rel_err(np.asarray(outputs[5], np.float64), np.linalg.solve(a3, b)) <= bound)


def singular_inputs(dtype) -> list[np.ndarray]:
    count = 2 * len(CONDS[dtype])  # the float64 program's batch is static
    return [np.ones((count, n, n), dtype) for n in SIZES] + [np.ones((count, 3, 2), dtype)]


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["float32", "float64"])
def program(request):
    """Everything exported and decomposed for one dtype; the float32 one has a dynamic batch."""
    dtype = request.param
    args = tuple(torch.from_numpy(x) for x in everything_inputs(dtype, batch=2))
    dynamic = tuple({0: torch.export.Dim("batch")} for _ in args) if dtype == np.float32 else None
    return dtype, decompose(torch.export.export(Everything(), args, dynamic_shapes=dynamic))


def batches(dtype) -> tuple[int, ...]:
    return (2, 3) if dtype == np.float32 else (2,)


def test_decomposed_program_keeps_no_linalg_op(program):
    _, ep = program
    assert not {t for t in program_ops(ep) if isinstance(t, torch._ops.OpOverload)
                and t.name().split("::")[1] in LINALG_OPS}


def test_plain_torch_onnx_export_and_onnxruntime(program, tmp_path):
    dtype, ep = program
    path = tmp_path / "m.onnx"
    torch.onnx.export(ep, dynamo=True, verbose=False).save(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for batch in batches(dtype):
        inputs = everything_inputs(dtype, batch, seed=batch)
        outputs = session.run(None, dict(zip(names, inputs, strict=True)))
        assert outputs[0].dtype == dtype
        check_outputs(outputs, inputs, EPS[dtype])
    singular = session.run(None, dict(zip(names, singular_inputs(dtype), strict=True)))
    assert all(not np.isfinite(x).all() for x in singular[:4])
    assert not singular[4].any()


def test_plain_openvino_convert_model(program):
    dtype, ep = program
    model = ov.convert_model(ep)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    # OpenVINO's CPU plugin keeps float64 only at the inputs and outputs and computes in
    # float32 (docs/decompositions.md), so float64 is held to float32 accuracy, on the
    # matrices a float32 computation can resolve.
    eps = EPS[np.float32]
    for batch in batches(dtype):
        inputs = everything_inputs(dtype, batch, seed=batch)
        outputs = [np.asarray(v) for v in compiled(inputs).values()]
        assert outputs[0].dtype == dtype
        keep = np.concatenate([np.full(batch, c <= 1e4) for c in CONDS[dtype]])
        check_outputs([x[keep] for x in outputs], [x[keep] for x in inputs], eps)
    singular = [np.asarray(v) for v in compiled(singular_inputs(dtype)).values()]
    # The float32 -> float64 output conversion saturates inf to the float32 maximum.
    huge = np.finfo(np.float32).max
    assert all(not (np.isfinite(x) & (np.abs(x) < huge)).all() for x in singular[:4])
    assert not singular[4].any()


# --- through dynexport's own API (contract §5) --------------------------------------------------

class Poses(torch.nn.Module):
    """FlashOcc's inversions: (B,1,4,4) float64 ego poses, (B,N,3,3) float32 intrinsics."""

    def forward(self, ego2global, intrins):
        return torch.inverse(ego2global), torch.inverse(intrins)


def poses_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    pose = np.tile(np.eye(4), (2, 1, 1, 1))
    for i in range(2):
        pose[i, 0, :3, :3] = np.linalg.qr(rng.standard_normal((3, 3)))[0]
        pose[i, 0, :3, 3] = rng.uniform(-100, 100, 3)
    k = np.array([[800.0, 0, 704], [0, 800, 256], [0, 0, 1]], np.float32)
    intrins = np.tile(k, (2, 6, 1, 1)) * (1 + 0.01 * rng.standard_normal((2, 6, 3, 3)))
    return pose, intrins.astype(np.float32)


def test_dynexport_export_converts_with_both_runtimes(tmp_path):
    pose, intrins = poses_inputs()
    ep = dynexport.export(Poses(), (torch.from_numpy(pose), torch.from_numpy(intrins)))
    path = dynexport.to_onnx(ep, tmp_path / "poses.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got_onnx = session.run(None, dict(zip(names, (pose, intrins), strict=True)))
    flat_pose, flat_intrins = pose.reshape(-1, 4, 4), intrins.reshape(-1, 3, 3)
    for model in (dynexport.to_openvino(ep), ov.convert_model(ep)):
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got_ov = [np.asarray(v) for v in compiled([pose, intrins]).values()]
        # float64 computed in float32 by OpenVINO's CPU plugin
        assert_inverse_close(got_ov[0].reshape(-1, 4, 4), flat_pose, EPS[np.float32])
        assert_inverse_close(got_ov[1].reshape(-1, 3, 3), flat_intrins, EPS[np.float32])
    assert_inverse_close(got_onnx[0].reshape(-1, 4, 4), flat_pose, EPS[np.float64])
    assert_inverse_close(got_onnx[1].reshape(-1, 3, 3), flat_intrins, EPS[np.float32])
