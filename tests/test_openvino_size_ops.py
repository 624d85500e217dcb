"""Arithmetic on sizes in OpenVINO (backends/openvino_size_ops.py): each Python operation
torch.export leaves in a graph for sizes, on a size that depends on the data (the number of
positive entries), converted by `dynexport.to_openvino` and compared with eager on two inputs
whose data-dependent sizes differ."""

import math

import numpy as np
import openvino as ov
import pytest
import torch

import dynexport

pytestmark = pytest.mark.slow


# name -> f(x, kept, n): kept the positive entries of x, n their number, a data-dependent size
# (an unbacked SymInt in the program); each output's shape or value is the expression under test
CASES = {
    "sym_min": lambda x, kept, n: kept.topk(torch.sym_min(n, 12)).values,
    "sym_max": lambda x, kept, n: torch.zeros(torch.sym_max(n, 12)),
    "sym_float": lambda x, kept, n: torch.full((1,), torch.sym_float(n)),
    "sym_int": lambda x, kept, n: torch.ones(torch.sym_int(torch.sym_float(n) * 0.5)),
    "sym_int_negative": lambda x, kept, n: torch.full((1,), torch.sym_int(-n / 4)),
    "sym_ite": lambda x, kept, n: torch.ones(torch.sym_ite(n > 9, n, x.shape[0])),
    "sym_sqrt": lambda x, kept, n: torch.full((1,), torch.sym_sqrt(n)),
    "sym_not": lambda x, kept, n: torch.full((1,), torch.sym_not(n > 9)),
    "sym_sum": lambda x, kept, n: torch.ones(torch.sym_sum([n, x.shape[0], 2])),
    "truediv": lambda x, kept, n: torch.full((1,), n / 3),
    "mod_negative": lambda x, kept, n: torch.full((1,), (-n) % 4),
    "pow": lambda x, kept, n: torch.ones(n ** 2),
    "floor": lambda x, kept, n: torch.ones(math.floor(n * 0.3)),
    "ceil": lambda x, kept, n: torch.ones(math.ceil(n * 0.3)),
    "round_half_even": lambda x, kept, n: torch.full((1,), round(n / 4)),
    "abs": lambda x, kept, n: torch.full((1,), abs(10 - n)),
    "and": lambda x, kept, n: torch.full((1,), (n > 9) & (x.shape[0] > 25)),
    "or": lambda x, kept, n: torch.full((1,), (n > 9) | (x.shape[0] > 25)),
    "ge_float": lambda x, kept, n: torch.full((1,), n >= 9.5),  # not `>= 9`
    "gt": lambda x, kept, n: torch.full((1,), n > 9),
    "lt": lambda x, kept, n: torch.full((1,), n < 18),
    "le": lambda x, kept, n: torch.full((1,), n <= 9),
    "eq": lambda x, kept, n: torch.full((1,), n == 9),
    "ne": lambda x, kept, n: torch.full((1,), n != 9),
}


class Cases(torch.nn.Module):
    """Every case as one output of one program: one export and one conversion for all."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kept = x[x > 0]
        return tuple(function(x, kept, kept.shape[0]) for function in CASES.values())


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """20 and 31 entries with 9 and 18 positive ones: on both sides of the cases' thresholds
    (9.5, 10, 12), and 2.25 and 4.5 quarters (Python rounds 4.5 to even, truncates -4.5 to -4,
    takes -9 % 4 = 3)."""
    small = torch.tensor([1.0] * 9 + [-1.0] * 11)
    large = torch.tensor([1.0] * 18 + [-1.0] * 13)
    return small[torch.randperm(20, generator=torch.Generator().manual_seed(0))], \
        large[torch.randperm(31, generator=torch.Generator().manual_seed(1))]


@pytest.fixture(scope="module")
def results() -> list[tuple[list[np.ndarray], list[torch.Tensor]]]:
    """(OpenVINO's outputs, eager's outputs) on the example and on the probe."""
    example, probe = inputs()
    program = torch.export.export(Cases(), (example,), dynamic_shapes=({0: torch.export.Dim("n")},),
                                  strict=False)
    compiled = ov.compile_model(dynexport.to_openvino(program), "CPU")
    return [(list(compiled(x.numpy()).values()), Cases()(x)) for x in (example, probe)]


@pytest.mark.parametrize("index, name", list(enumerate(CASES)))
def test_size_arithmetic_converts_and_matches_eager(results, index, name):
    for got_all, want_all in results:
        got, want = got_all[index], want_all[index].numpy()
        assert got.shape == want.shape and got.dtype == want.dtype, (name, got, want)
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
    example, probe = (want_all[index].numpy() for _, want_all in results)
    assert example.shape != probe.shape or not np.array_equal(example, probe), \
        "the two inputs must tell the expression from a constant"
