"""Matrix inverse, determinant and solve for small static n, written with elementwise ops.

torch.export keeps `aten.inverse` / `aten.linalg_inv` (CompositeImplicitAutograd) and both
exporters lower them to `aten.linalg_inv_ex`, which neither torch.onnx nor OpenVINO can
translate (likewise `_linalg_det` and `_linalg_solve_ex`; see docs/decompositions.md).
Here they become indexing, arithmetic, argmax and where, which every backend has.

The algorithm is Gauss-Jordan elimination with partial pivoting, unrolled over the n
columns, for every n <= 8. The adjugate (cofactors over determinant) was measured and
rejected even for n = 3 and 4: it loses digits like cond(A)**2 (a float32 3x3 with
cond 1e6 came out inf, a float64 4x4 with cond 1e10 was off by 2.5e5 * cond * eps), while
pivoted elimination stays within cond * eps like LAPACK.

Any leading batch dimensions (dynamic ones too) are kept; the matrix size must be static.
A singular matrix gives inf/nan entries, as `linalg_inv_ex` does in eager, never an error.
Inputs these functions do not handle (other dtypes, symbolic or larger n) return
NotImplemented, which keeps the original op in the graph for the coverage report to name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dynexport.adapters.torch_export import OpOverload

MAX_SIZE = 8
_DTYPES = (torch.float32, torch.float64)
# The fix a report gives where a backend fails on these ops: this module declined the call.
DECLINED = ("dynexport decomposes inverse, det and solve only for float32/float64 matrices of "
            f"static size up to {MAX_SIZE}x{MAX_SIZE}: keep the size static and the dtype "
            "float32/float64, or compute the result outside the model and pass it in as an "
            "input")


def static_size(A: torch.Tensor) -> int | None:
    """The n of a (..., n, n) float32/float64 tensor with static 1 <= n <= 8, else None."""
    if A.dim() < 2 or A.dtype not in _DTYPES:
        return None
    n, m = A.shape[-2], A.shape[-1]
    if not isinstance(n, int) or not isinstance(m, int) or n != m or not 1 <= n <= MAX_SIZE:
        return None
    return n


def gauss_jordan(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(X with A X = B, det A) for A (..., n, n) with static n, B (..., n, k) broadcast to A.

    Each column k picks the row of largest |entry| among rows k..n-1 as pivot (partial
    pivoting), swaps it into place, scales it to a unit pivot and eliminates column k from
    every other row. The row swap and the row write use `where`, so they are exact.
    """
    n = A.shape[-1]
    # A zero-width B (determinant only) is left out: empty tensors trip some runtimes.
    M = torch.cat([A, B.expand(*A.shape[:-1], B.shape[-1])], dim=-1) if B.shape[-1] else A
    rows = torch.arange(n, device=A.device)
    sign = torch.ones_like(A[..., 0, 0])
    det = singular = None
    for k in range(n):
        p = torch.argmax(M[..., k:, k].abs(), dim=-1) + k
        is_p = (rows == p[..., None])[..., None]
        row_p = torch.where(is_p, M, 0).sum(dim=-2)
        M = torch.where(is_p, M[..., k:k + 1, :], M)
        row = (row_p / row_p[..., k:k + 1]).unsqueeze(-2)
        M = torch.where((rows == k)[:, None], row, M - M[..., :, k:k + 1] * row)
        pivot = row_p[..., k]  # only the determinant uses it; unused nodes are dropped
        sign = torch.where(p == k, sign, -sign)
        det = pivot if det is None else det * pivot
        singular = pivot == 0 if singular is None else singular | (pivot == 0)
    # After a zero pivot the later ones are 0/0 = nan; the determinant is exactly 0 then.
    return M[..., :, n:], torch.where(singular, 0, sign * det)


def inverse_and_det(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse, determinant) of a (..., n, n) tensor with static n."""
    n = A.shape[-1]
    return gauss_jordan(A, torch.eye(n, dtype=A.dtype, device=A.device))


def _info(det: torch.Tensor) -> torch.Tensor:
    # LAPACK's info is the 1-based index of the first zero pivot; we report 1 for an
    # exactly singular matrix (determinant zero or nan) and 0 otherwise.
    return ((det == 0) | torch.isnan(det)).to(torch.int32)


def inverse(A: torch.Tensor) -> torch.Tensor:
    """aten.inverse / aten.linalg_inv."""
    if static_size(A) is None:
        return NotImplemented
    return inverse_and_det(A)[0]


def linalg_inv_ex(A: torch.Tensor, *, check_errors: bool = False) -> tuple[torch.Tensor, ...]:
    """aten.linalg_inv_ex: (inverse, info); check_errors cannot raise inside a graph."""
    if static_size(A) is None:
        return NotImplemented
    inv, det = inverse_and_det(A)
    return inv, _info(det)


def det(A: torch.Tensor) -> torch.Tensor:
    """aten.det / aten.linalg_det: the product of the pivots with the sign of the swaps."""
    if static_size(A) is None:
        return NotImplemented
    return gauss_jordan(A, A.new_empty(0, 0))[1]


def _solve(A: torch.Tensor, B: torch.Tensor, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if static_size(A) is None or B.dtype != A.dtype:
        return NotImplemented
    # ATen's linalg_solve_is_vector_rhs: B is a (batch of) vector(s).
    vector = B.dim() == 1 or (B.dim() == A.dim() - 1 and B.shape == A.shape[:-1])
    if not left:
        # X A = B  <=>  A^T X^T = B^T
        A = A.mT
        B = B if vector else B.mT
    if vector:
        B = B.unsqueeze(-1)
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    A = A.expand(*batch, *A.shape[-2:])
    X, d = gauss_jordan(A, B.expand(*batch, *B.shape[-2:]))
    if vector:
        X = X.squeeze(-1)
    elif not left:
        X = X.mT
    return X, _info(d)


def linalg_solve(A: torch.Tensor, B: torch.Tensor, *, left: bool = True) -> torch.Tensor:
    """aten.linalg_solve by elimination on [A | B]."""
    out = _solve(A, B, left)
    return out if out is NotImplemented else out[0]


def linalg_solve_ex(A: torch.Tensor, B: torch.Tensor, *, left: bool = True,
                    check_errors: bool = False) -> tuple[torch.Tensor, ...]:
    """aten.linalg_solve_ex: (result, info)."""
    return _solve(A, B, left)


def table() -> dict[OpOverload, Callable]:
    """This module's entries of the decomposition table."""
    aten = torch.ops.aten
    return {
        aten.inverse.default: inverse,
        aten.linalg_inv.default: inverse,
        aten.linalg_inv_ex.default: linalg_inv_ex,
        aten.det.default: det,
        aten.linalg_det.default: det,
        aten.linalg_solve.default: linalg_solve,
        aten.linalg_solve_ex.default: linalg_solve_ex,
    }
