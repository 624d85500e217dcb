"""compare.py: one definition of label agreement, and every table that shows agreement (the
verification, precision and accuracy rows) gives the same number for the same pair of
outputs (issue #21)."""

import numpy as np
import pytest
import torch

from dynexport.compare import Differences, LabelCount, json_number, label_agreement, percent
from dynexport.measure import label_agreement as pooled_agreement
from dynexport.precision.variants import _compare as variant_comparison
from dynexport.tolerance import Tolerance
from dynexport.verify import Comparison

RNG = np.random.default_rng(0)
LOGITS = RNG.standard_normal((50, 10)).astype(np.float32)
MOVED = LOGITS.copy()
MOVED[:7] = MOVED[:7, ::-1]  # 7 rows whose argmax changes (no ties in random normals)
LABELS = LOGITS.argmax(-1)


def test_labels_are_integer_values_or_the_argmax_of_outputs_judged_by_them():
    expected = float((LOGITS.argmax(-1) == MOVED.argmax(-1)).mean())
    assert label_agreement(LOGITS, MOVED, by_argmax=True) == pytest.approx(expected)
    assert expected < 1
    assert label_agreement(LOGITS, MOVED) is None  # a float output not judged by labels
    assert label_agreement(LABELS, MOVED.argmax(-1)) == pytest.approx(expected)
    assert label_agreement(np.zeros(0, np.int64), np.zeros(0, np.int64)) == 1.0


def test_every_table_gives_one_number_for_one_pair():
    """Verification (tolerance argmax), the precision stage (the output judged by labels) and
    the accuracy stage (one validation sample) on the same logits and labels."""
    for reference, candidate, by_argmax in ((LOGITS, MOVED, True),
                                            (LABELS, MOVED.argmax(-1), False)):
        verified = Comparison.of(reference, candidate, Tolerance(argmax=by_argmax))
        variant = variant_comparison("example", "out", reference, candidate, by_argmax)
        pooled = pooled_agreement([{"out": torch.from_numpy(reference)}],
                                  [{"out": torch.from_numpy(candidate)}],
                                  {"out"} if by_argmax else set())
        assert verified.label_agreement == variant.label_agreement == pooled["out"]


def test_pooled_agreement_counts_labels_over_samples():
    count = LabelCount()
    assert count.add(np.array([1, 2, 3]), np.array([1, 2, 0]))
    assert count.add(np.array([4, 5]), np.array([4, 5]))
    assert not count.add(np.ones(3, np.float32), np.ones(3, np.float32))  # no labels
    assert (count.equal, count.total, count.share) == (4, 5, 0.8)


def test_differences_count_matching_non_finite_values_as_equal():
    reference = np.array([1.0, np.nan, np.inf, 2.0])
    same = Differences.of(reference, reference.copy())
    assert same.max_abs == 0.0 and same.scale == 2.0
    other = Differences.of(reference, np.array([1.0, 0.0, np.inf, 2.0]))
    assert other.max_abs == np.inf
    assert json_number(other.max_abs) is None and json_number(0.5) == 0.5


def test_percent_never_rounds_a_disagreement_up_to_all():
    assert percent(0.999999) == "99.999 %" and percent(1.0) == "100 %" and percent(None) == ""
